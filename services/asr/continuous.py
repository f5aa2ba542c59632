"""Iteration-level (continuous) batching of Whisper's plain greedy decoding for short clips.

A `PlainDecodeLoop` holds the running sequences of one batch key. A request joins between two steps: its audio is
featurised and encoded alone, its language detected as Whisper's `detect_language` does (by the loop's own decoder
pass), and its prompt (the forced start tokens, after `<|startofprev|>` and the prompt text when one is given) run
through the decoder into a cache slot of its own. Each `step` then feeds every running sequence its latest token in
one batched decoder pass, and a sequence leaves the step it produces end-of-text or reaches its length limit.

What decides the tokens is taken from Whisper's own `generate()` for that request: the decoder prompt, the logits
processors (suppressed tokens, suppression at the start, timestamp rules, the checkpoint's sequence bias) and the
stopping criteria are the very objects generate() builds, read out of it just before its first decoder pass
(`ASRRunner.generation_setup`). Each sequence's scores go through its own processors with its own ids, so
stateful processors see exactly what they would see alone. The finished window is described by the same code the
whole-request path uses (Whisper's `_retrieve_segment`, `DecodeCapture.add_window`, `ASRRunner.transcript`), so
the `Transcript` is the one `predict_batch` returns for the request alone. A window whose last segment is left
unfinished (two timestamp tokens, then no closing one) would make generate() seek on into a second window; such a
request is decoded again whole, greedily, so its first window comes out the same.

The decoder runs as plain tensor code, as `drafting.DraftSteps` does at batch 1, over many slots: keys and values
in tensors preallocated for `capacity` sequences (grown by doubling), each slot with its own length; attention to
positions past a slot's length is masked. Running sequences stay packed in slots [0, n): a sequence that leaves
hands its slot to the last one, so every step reads plain slices of the caches.
"""

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from services.kit.batcher import Work

from . import metrics
from .domain import ASRJob, Transcript
from .drafting import cross_attention_kv
from .generation import DecodeCapture, GenerationSetup, compression_ratio
from .runner import ASRRunner

# Mel frames (100 a second) in Whisper's 30 s window: a short clip's features are padded to one window.
WINDOW_FRAMES = 3000


@dataclass
class _Sequence:
    work: Work
    job: ASRJob
    language: str
    setup: GenerationSetup
    encoder_hidden: torch.Tensor  # 1 x frames x d, kept for word timings
    ids: torch.Tensor  # 1 x (prompt + generated): what the processors and stopping criteria read
    no_speech_prob: float | None
    logprobs: list[float] = field(default_factory=list)
    done: bool = False
    passes: float = 0.0  # its share of the decoder passes it took part in
    steps: int = 0  # the batched decoder passes it took part in (its prompt's pass not counted)
    compute: float = 0.0  # its share of their seconds

    @property
    def keeps_scores(self) -> bool:
        """Token log-probabilities are reported, or describe the window (`avg_logprob`)."""
        return self.job.logprobs or self.job.window_stats

    @property
    def prompt_length(self) -> int:
        return self.setup.prompt.shape[1]

    @property
    def length(self) -> int:
        return self.ids.shape[1]


class ContinuousDecoding:
    """The runner's continuous batching, as the batcher asks for it (`StepDecoder`, services/kit/continuous.py):
    a `PlainDecodeLoop` for the batch key of a job `ASRRunner.step_decodable` accepts; None (whole-request
    decoding through `predict_batch`) for every other."""

    def __init__(self, runner: ASRRunner):
        self.runner = runner

    def open_loop(self, key: Hashable, payload: ASRJob, waiting: int = 1) -> "PlainDecodeLoop | None":
        return PlainDecodeLoop(self.runner) if self.runner.step_decodable(payload, waiting) else None

    def rows(self, payload: ASRJob) -> int:
        return 1


class PlainDecodeLoop:
    """A `DecodeLoop` (services/kit/continuous.py) for short-form, greedy, plain-path Whisper requests of one
    batch key. Lives in the model thread."""

    def __init__(self, runner: ASRRunner):
        self.runner = runner
        model = runner.model
        self.decoder = model.model.decoder
        self.encoder = model.model.encoder
        self.head = model.proj_out
        self.layers = list(self.decoder.layers)
        attention = self.layers[0].self_attn
        self.heads, self.head_dim = attention.num_heads, attention.head_dim
        self.embed_dim = self.heads * self.head_dim
        self.max_positions = model.config.max_target_positions
        self.running: list[_Sequence] = []
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.cross_keys: list[torch.Tensor] = []
        self.cross_values: list[torch.Tensor] = []

    # -- the DecodeLoop protocol ----------------------------------------------------------------------------

    @torch.inference_mode()
    def join(self, works: list[Work]) -> None:
        # The joiners' 30 s windows go through the encoder together (each padded to 30 s, as alone: only the
        # rounding of the batched products differs); prompts differ in length, so each gets its own pass.
        # All or none: when one cannot join, the batcher joins the others again one by one.
        before = len(self.running)
        try:
            started = time.perf_counter()
            features = self.runner.features([work.payload for work in works]).input_features
            encoder_hidden = self.encoder(features)[0]
            share = (time.perf_counter() - started) / len(works)
            for index, work in enumerate(works):
                self._join(work, features[index : index + 1], encoder_hidden[index : index + 1], share)
        except BaseException:
            while len(self.running) > before:
                self._release(len(self.running) - 1)
            raise

    @torch.inference_mode()
    def step(self) -> list[tuple[Work, Any]]:
        # Sequences that ended at their prompt's pass (end-of-text first, or a limit of one token) leave first.
        finished = self._collect()
        if self.running:
            rows = len(self.running)
            lengths = torch.tensor([s.length - 1 for s in self.running], device=self.runner.runtime.device)
            last = torch.cat([s.ids[:, -1:] for s in self.running])
            started = time.perf_counter()
            hidden = self._forward(0, rows, last, lengths)
            self.runner.main_passes += 1
            self._choose(list(self.running), self.head(hidden[:, -1]))
            share = (time.perf_counter() - started) / rows
            for sequence in list(self.running):
                sequence.passes += 1 / rows
                sequence.steps += 1
                sequence.compute += share
        finished.extend(self._collect())
        return finished

    @torch.inference_mode()
    def leave(self, work: Work) -> None:
        for index, sequence in enumerate(self.running):
            if sequence.work is work:
                self._release(index)
                return

    # -- joining ----------------------------------------------------------------------------------------------

    def _join(
        self, work: Work, features: torch.Tensor, encoder_hidden: torch.Tensor, encode_s: float
    ) -> None:
        runner, job = self.runner, work.payload
        started = time.perf_counter()
        slot = len(self.running)
        self._reserve(slot + 1)
        for i, layer in enumerate(self.layers):
            # Written straight into the slot: one copy, not a contiguous copy and then another.
            into = (self.cross_keys[i][slot : slot + 1], self.cross_values[i][slot : slot + 1])
            cross_attention_kv(layer.encoder_attn, encoder_hidden, into)
        language = self._language(job, slot)
        work.span.set_attribute("asr.path", "plain")
        encoded = BaseModelOutput(last_hidden_state=encoder_hidden)
        setup = runner.generation_setup(job, language, features, encoded)
        prompt = setup.prompt
        if prompt.shape[1] >= self.max_positions:
            raise ValueError(f"a prompt of {prompt.shape[1]} tokens leaves no room to decode")
        start = torch.zeros(1, dtype=torch.long, device=prompt.device)
        hidden = self._forward(slot, slot + 1, prompt, start)
        runner.main_passes += 1
        sequence = _Sequence(
            work, job, language, setup, encoder_hidden, prompt, self._no_speech(prompt, hidden)
        )
        # The head over every prompt position, as generate() computes the logits of its first pass.
        self._choose([sequence], self.head(hidden)[:, -1])
        self.running.append(sequence)
        sequence.passes, sequence.compute = 1.0, encode_s + time.perf_counter() - started

    def _language(self, job: ASRJob, slot: int) -> str:
        """The job's language, or the one Whisper's `detect_language` would detect: from the logits of a pass of
        `<|startoftranscript|>` alone over the slot's cross-attention keys and values (already computed for
        decoding, where detect_language's own model call would compute them again). The prompt's pass then
        writes over that position."""
        if job.language is not None or not self.runner.multilingual:
            return job.language or "en"
        sot = self.runner.model.generation_config.decoder_start_token_id
        ids = torch.full((1, 1), sot, dtype=torch.long, device=self.runner.runtime.device)
        start = torch.zeros(1, dtype=torch.long, device=ids.device)
        hidden = self._forward(slot, slot + 1, ids, start)
        self.runner.main_passes += 1
        return self.runner.language_of(self.head(hidden[:, -1]).float())

    def _no_speech(self, prompt: torch.Tensor, hidden: torch.Tensor) -> float | None:
        """OpenAI's no_speech_prob as `WindowCapturingWhisper.note_prefill` takes it: `<|nospeech|>` after
        `<|startoftranscript|>`, from the unprocessed logits of the prompt's pass."""
        token = self.runner.no_speech_token
        sot = self.runner.model.generation_config.decoder_start_token_id
        ids = prompt[0].tolist()
        if token is None or sot not in ids:
            return None
        probabilities = self.head(hidden[:, ids.index(sot)]).float().softmax(dim=-1)
        return float(probabilities[0, token])

    # -- caches -------------------------------------------------------------------------------------------------

    def _reserve(self, rows: int) -> None:
        """Room for `rows` running sequences, doubling the caches when full (running slots are copied over)."""
        if rows <= self.capacity:
            return
        capacity = max(rows, 2 * self.capacity, 1)
        reference = self.decoder.embed_tokens.weight  # the head may be int8 (no float weight)
        frames = self.runner.model.config.max_source_positions
        self_shape = (capacity, self.heads, self.max_positions, self.head_dim)
        cross_shape = (capacity, self.heads, frames, self.head_dim)
        used = len(self.running)

        def grown(old: list[torch.Tensor], shape) -> list[torch.Tensor]:
            # Zeros, not garbage: a masked position weighs exactly 0, and 0 x NaN would still be NaN.
            new = [reference.new_zeros(shape) for _ in self.layers]
            for before, after in zip(old, new, strict=False):
                after[:used] = before[:used]
            return new

        self.keys, self.values = grown(self.keys, self_shape), grown(self.values, self_shape)
        self.cross_keys = grown(self.cross_keys, cross_shape)
        self.cross_values = grown(self.cross_values, cross_shape)
        self.capacity = capacity

    def _release(self, index: int) -> None:
        """Free slot `index`: the last running sequence moves into it, keeping slots [0, n) packed."""
        last = len(self.running) - 1
        if index != last:
            length = self.running[last].length
            for cache in (self.keys, self.values):
                for layer in cache:
                    layer[index, :, :length] = layer[last, :, :length]
            for cache in (self.cross_keys, self.cross_values):
                for layer in cache:
                    layer[index] = layer[last]
            self.running[index] = self.running[last]
        self.running.pop()

    # -- decoding ---------------------------------------------------------------------------------------------

    def _forward(self, first: int, end: int, ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Feed `ids` (rows x n) to slots [first, end) after each slot's cached `start` positions: the final
        hidden states (rows x n x d). The arithmetic of `WhisperDecoder.forward` (see `drafting.DraftSteps`),
        with each slot's own positions; a slot attends to its cached positions and the new ones up to itself."""
        rows, n = ids.shape
        decoder = self.decoder
        steps = torch.arange(n, device=ids.device)
        positions = start[:, None] + steps  # rows x n
        hidden = decoder.embed_tokens(ids) * decoder.embed_scale + decoder.embed_positions.weight[positions]
        span = int(start.max()) + n
        uniform = bool((start == start[0]).all())
        if n == 1 and uniform:
            mask = None  # every slot sees all `span` positions, as one sequence alone would
        elif uniform:
            mask = torch.ones(n, span, dtype=torch.bool, device=ids.device).tril(int(start[0]))
        else:
            seen = torch.arange(span, device=ids.device)
            mask = (seen[None, None, :] <= positions[:, :, None])[:, None]  # rows x 1 x n x span
        slots = torch.arange(first, end, device=ids.device)
        for i, layer in enumerate(self.layers):
            attention = layer.self_attn
            x = layer.self_attn_layer_norm(hidden)
            query = self._split_heads(attention.q_proj(x) * attention.scaling, rows)
            keys, values = self.keys[i], self.values[i]
            new_keys = self._split_heads(attention.k_proj(x), rows)
            new_values = self._split_heads(attention.v_proj(x), rows)
            if uniform:
                at = int(start[0])
                keys[first:end, :, at : at + n] = new_keys
                values[first:end, :, at : at + n] = new_values
            else:  # one new position per slot, each at its own length
                keys[slots, :, start] = new_keys[:, :, 0]
                values[slots, :, start] = new_values[:, :, 0]
            out = F.scaled_dot_product_attention(
                query, keys[first:end, :, :span], values[first:end, :, :span], attn_mask=mask, scale=1.0
            )
            hidden = hidden + attention.out_proj(out.transpose(1, 2).reshape(rows, n, self.embed_dim))
            cross = layer.encoder_attn
            x = layer.encoder_attn_layer_norm(hidden)
            query = self._split_heads(cross.q_proj(x) * cross.scaling, rows)
            out = F.scaled_dot_product_attention(
                query, self.cross_keys[i][first:end], self.cross_values[i][first:end], scale=1.0
            )
            hidden = hidden + cross.out_proj(out.transpose(1, 2).reshape(rows, n, self.embed_dim))
            x = layer.final_layer_norm(hidden)
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))
        return decoder.layer_norm(hidden)

    def _split_heads(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        return x.view(rows, -1, self.heads, self.head_dim).transpose(1, 2)

    def _choose(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Each sequence's next token from its row of `logits`, chosen as generate's greedy loop chooses it: float32
        logits, its own processors over its own ids, argmax; then its stopping criteria."""
        logits = logits.float()
        for row, sequence in enumerate(sequences):
            scores = sequence.setup.processors(sequence.ids, logits[row : row + 1])
            token = scores.argmax(dim=-1)
            sequence.ids = torch.cat([sequence.ids, token[:, None]], dim=-1)
            if sequence.keeps_scores:
                sequence.logprobs.append(float(torch.log_softmax(scores[0], dim=-1)[token[0]]))
            sequence.done = bool(sequence.setup.stopping(sequence.ids, scores)[0])

    def _collect(self) -> list[tuple[Work, Any]]:
        finished = []
        index = 0
        while index < len(self.running):
            sequence = self.running[index]
            if not sequence.done:
                index += 1
                continue
            self._release(index)
            try:
                finished.append((sequence.work, self._transcript(sequence)))
            except Exception as exc:  # one bad request must not fail its neighbours
                finished.append((sequence.work, exc))
        return finished

    # -- results ----------------------------------------------------------------------------------------------

    def _transcript(self, sequence: _Sequence) -> Transcript:
        """The window described by the whole-request path's own code, from what generate() would hand it."""
        runner, job, work = self.runner, sequence.job, sequence.work
        model = runner.model
        config = model.generation_config
        capture: DecodeCapture = runner.window_capture([job], [sequence.language])
        partials = None
        if job.stream:
            partials = capture.on_window = runner.partial_texts([job], lambda _, partial: work.emit(partial))
        generated = sequence.ids[0, sequence.prompt_length :]
        # Only end-of-text ends a greedy sequence early, and it is the pad token: no padding to strip.
        tokens = generated.tolist()
        logprobs = torch.tensor(sequence.logprobs) if sequence.keeps_scores else None
        avg_logprob = float(logprobs[: len(tokens)].mean()) if logprobs is not None and tokens else None
        row = {
            "temperature": 0.0,
            "token_logprobs": logprobs,
            "no_speech_prob": sequence.no_speech_prob,
            "avg_logprob": avg_logprob,
            "compression_ratio": compression_ratio(capture.text_of(tokens)),
            "encoder_hidden": sequence.encoder_hidden[0],
        }
        if tokens and tokens[-1] == config.eos_token_id:
            generated = generated[:-1]
        input_stride = model.model.encoder.conv1.stride[0] * model.model.encoder.conv2.stride[0]
        window = dict(
            seek_sequence=generated,
            seek_outputs=[row],
            time_offset=torch.zeros(1, dtype=torch.float64),
            timestamp_begin=sequence.setup.timestamp_begin,
            seek_num_frames=torch.tensor([WINDOW_FRAMES]),
            time_precision=0.02,  # generate()'s defaults, which the runner keeps
            time_precision_features=0.01,
            input_stride=input_stride,
            prev_idx=0,
            idx=0,
            return_token_timestamps=False,
            decoder_input_ids=sequence.setup.prompt,
        )
        segments, seek = WhisperForConditionalGeneration._retrieve_segment(**window)
        if int(seek) < WINDOW_FRAMES:
            # The window ended inside an unfinished segment, so generate() would decode on from its last
            # timestamp in a second window: the request is decoded whole instead (greedy: the same first window).
            return runner.transcribe([job], "plain", on_partial=lambda _, partial: work.emit(partial))[0]
        capture.add_window(segments, **window)
        if partials is not None:
            partials.finish()
        transcript = runner.transcript(job, sequence.language, capture.windows[0], "plain")
        metrics.record_transcriptions(
            "plain",
            requests=1,
            main_passes=sequence.passes,
            tokens=len(transcript.tokens),
            audio_seconds=transcript.duration,
            elapsed=max(sequence.compute, 1e-9),
        )
        # For `auto` decisions: the plain path's cost at the load it ran under (sequences per pass, on average).
        load = (sequence.steps + 1) / sequence.passes
        runner.path_choice.record("plain", sequence.compute, len(transcript.tokens) + 1, load=load)
        return transcript
