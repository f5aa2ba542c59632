"""Iteration-level (continuous) batching of SpeechT5 text-to-speech: sentences join a running decode at the
next step and leave it when they stop, each with its own slot in the self-attention cache.

Only unseeded speech jobs decode here (`SpeechRunner.open_loop` declines seeded ones, which run
whole-request so that their bytes depend on nothing but the request). A job decodes its sentences in the
generate calls `predict_speech` would make for it alone (`synthesis.solo_calls`), one call after the
other. Within a call every sentence shares the step count, the pre-net dropout mask of each step and the
length bounds, as in `generate_speech`; calls of different jobs, at different steps, share the decoder's
matrix products, and each call draws its own masks from the global generator. So a job's audio is what
`predict_speech` makes for it alone but for the random dropout draws: the same calls and length bounds,
and where the masks are deterministic (dropout probability 0) the same frames and the same samples up to
the rounding of batched matrix products (about 1e-5).

The decoder step is plain tensor code over the model's own modules: only the newest frame goes through the
pre-net (see `_dropout_masks` for its mask), each row attends to its own cached positions, and a
sentence's spectrogram goes through the post-net once, when it stops. A call's sentences are vocoded
together when its last one stops (with other calls that pad to the same length), and emitted in text order
as before. The steps around the decoder (length bounds, stretch, vocoder, emitting in order) are the runner's
own, from synthesis.py.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import SpeechT5ForTextToSpeech, SpeechT5HifiGan, SpeechT5Tokenizer

from services.kit.batcher import Work
from services.kit.torch_models import TorchRuntime

from .metrics import ROWS_PER_CALL
from .settings import TTSSettings
from .synthesis import (
    AudioResult,
    SpeechJob,
    emit_in_order,
    length_ratios,
    max_frames,
    observe,
    solo_calls,
    speaker_rows,
    stretch,
    vocode,
)

INITIAL_POSITIONS = 64  # self-attention cache length at first; doubles when a sentence outgrows it


@dataclass(eq=False)
class _Job:
    work: Work
    calls: list[list[int]]  # sentence indices per generate call, in decoding order
    started: float
    next_call: int = 0
    ready: dict[int, np.ndarray] = field(default_factory=dict)  # sentence index -> waveform
    parts: list[np.ndarray] = field(default_factory=list)  # emitted so far, pauses included

    @property
    def speech(self) -> SpeechJob:
        return self.work.payload


@dataclass(eq=False)
class _Call:
    """One generate call's worth of sentences, decoded in step."""

    job: _Job
    sentences: list[int]
    min_steps: int
    max_steps: int
    frame_limits: list[int]  # each sentence's own length limit (as the runner trims its calls' rows)
    steps: int = 0
    running: int = 0
    spectrograms: dict[int, torch.Tensor] = field(default_factory=dict)  # sentence index -> finished one


@dataclass(eq=False)
class _Rows:
    """Per-row decoder state; dimension 0 (2 for the caches) is the row, in `SpeechLoop.rows` order. The loop
    keeps it in slots: room for more rows than run, the running ones first."""

    self_kv: torch.Tensor  # [layers, 2, rows, heads, positions, head_dim]
    cross_kv: torch.Tensor  # [layers, 2, rows, heads, encoder positions, head_dim]
    cross_mask: torch.Tensor  # [rows, encoder positions], True where there is text
    speakers: torch.Tensor  # [rows, speaker dim], normalized
    frames: torch.Tensor  # [rows, positions, reduction * mel bins]: the spectrogram so far
    last_frame: torch.Tensor  # [rows, mel bins]: the pre-net's next input
    positions: torch.Tensor  # [rows]: the position each row decodes next

    def first(self, rows: int) -> "_Rows":
        """Views of the first `rows` rows (writes to them land in these tensors)."""
        return _Rows(**{name: _row_slice(name, tensor, slice(rows)) for name, tensor in vars(self).items()})

    def move(self, targets: list[int], sources: list[int]) -> None:
        """Copy the rows at `sources` into the rows at `targets`, every tensor at once."""
        for name, tensor in vars(self).items():
            index = (slice(None),) * _ROW_DIM.get(name, 0)
            tensor[(*index, targets)] = tensor[(*index, sources)]

    def resized(self, rows: int, **sizes: tuple[int, int]) -> "_Rows":
        """A copy with room for `rows` rows and, for each `name=(dim, size)`, that size in that dimension; the
        rows so far keep their values, new room is zero."""
        grown = {}
        for name, tensor in vars(self).items():
            shape = list(tensor.shape)
            shape[_ROW_DIM.get(name, 0)] = rows
            if name in sizes:
                dim, size = sizes[name]
                shape[dim] = size
            room = tensor.new_zeros(shape)
            room[tuple(slice(0, size) for size in tensor.shape)] = tensor
            grown[name] = room
        return _Rows(**grown)


_ROW_DIM = {"self_kv": 2, "cross_kv": 2}  # the row dimension of each _Rows tensor; 0 when not named here


@dataclass(eq=False)
class _Prefill:
    """A prepared call's rows, before they run."""

    cross_kv: torch.Tensor  # [layers, 2, rows, heads, encoder positions, head_dim]
    cross_mask: torch.Tensor  # [rows, encoder positions]
    speakers: torch.Tensor  # [rows, speaker dim]


def _row_slice(name: str, tensor: torch.Tensor, rows: slice) -> torch.Tensor:
    return tensor[(slice(None),) * _ROW_DIM.get(name, 0) + (rows,)]


class SpeechLoop:
    """A running text-to-speech decode (the kit's `DecodeLoop`); it lives in the model thread."""

    def __init__(
        self,
        model: SpeechT5ForTextToSpeech,
        tokenizer: SpeechT5Tokenizer,
        vocoder: SpeechT5HifiGan,
        runtime: TorchRuntime,
        settings: TTSSettings,
    ):
        self.model, self.tokenizer, self.vocoder = model, tokenizer, vocoder
        self.runtime, self.settings = runtime, settings
        config = self.model.config
        self.device, self.dtype = runtime.device, runtime.dtype
        self.reduction, self.mel_bins = config.reduction_factor, config.num_mel_bins
        self.heads = config.decoder_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.prenet_units = config.speech_decoder_prenet_units
        self.dropout = config.speech_decoder_prenet_dropout
        self.jobs: dict[Work, _Job] = {}
        self.rows: list[tuple[_Call, int]] = []  # (call, sentence index) per running decoder row
        layers = config.decoder_layers
        empty = dict(device=self.device, dtype=self.dtype)
        slots = settings.max_rows_per_call
        # Room for `slots` rows; the running ones are the first len(self.rows) (see `state`).
        self.slots = _Rows(
            self_kv=torch.zeros(layers, 2, slots, self.heads, INITIAL_POSITIONS, self.head_dim, **empty),
            cross_kv=torch.zeros(layers, 2, slots, self.heads, 1, self.head_dim, **empty),
            cross_mask=torch.zeros(slots, 1, dtype=torch.bool, device=self.device),
            speakers=torch.zeros(slots, config.speaker_embedding_dim, **empty),
            frames=torch.zeros(slots, INITIAL_POSITIONS, self.reduction * self.mel_bins, **empty),
            last_frame=torch.zeros(slots, self.mel_bins, **empty),
            positions=torch.zeros(slots, dtype=torch.long, device=self.device),
        )

    @property
    def state(self) -> _Rows:
        """The running rows' state: views into the slots."""
        return self.slots.first(len(self.rows))

    # -- DecodeLoop -----------------------------------------------------------------------------

    @torch.inference_mode()
    def join(self, works: list[Work]) -> None:
        # Everything that can fail happens before the loop changes, so a failed join leaves no half-joined work.
        prepared = []
        for work in works:
            job: SpeechJob = work.payload
            if not isinstance(job, SpeechJob):
                raise TypeError(f"the speech loop decodes speech jobs, not {type(job).__name__}")
            if job.seed is not None:
                raise ValueError("seeded speech jobs run whole-request, not in the decode loop")
            state = _Job(work, solo_calls(job, self.settings.max_rows_per_call), time.perf_counter())
            prepared.append((state, self._prepare_call(state)))
        for state, (call, rows) in prepared:
            self.jobs[state.work] = state
            self._add(call, rows)

    @torch.inference_mode()
    def step(self) -> list[tuple[Work, AudioResult | Exception]]:
        if not self.rows:
            return []
        stops = self._decode()
        finished: dict[_Call, list[int]] = {}  # call -> rows that stopped in this step
        for row, ((call, _), stop) in enumerate(zip(self.rows, stops, strict=True)):
            if call.steps >= call.max_steps or (call.steps >= call.min_steps and stop):
                finished.setdefault(call, []).append(row)
        if not finished:
            return []
        postnet = self.model.speech_decoder_postnet
        for call, rows in finished.items():
            index = torch.tensor(rows, device=self.device)
            spectrograms = postnet.postnet(
                self.state.frames.index_select(0, index)[:, : call.steps].reshape(
                    len(rows), -1, self.mel_bins
                )
            )
            for row, spectrogram in zip(rows, spectrograms, strict=True):
                sentence = self.rows[row][1]
                limit = call.frame_limits[call.sentences.index(sentence)]
                call.spectrograms[sentence] = spectrogram[:limit]
                call.running -= 1
        self._free([row for rows in finished.values() for row in rows])
        complete = [call for call in finished if call.running == 0]
        self._vocode(complete)
        done = []
        for call in complete:
            result = self._complete(call)
            if result is not None:
                done.append((call.job.work, result))
        return done

    @torch.inference_mode()
    def leave(self, work: Work) -> None:
        job = self.jobs.pop(work, None)
        if job is not None:
            self._free([row for row, (call, _) in enumerate(self.rows) if call.job is job])

    # -- calls ----------------------------------------------------------------------------------

    def _prepare_call(self, job: _Job) -> tuple[_Call, _Prefill]:
        """Encode the job's next call and compute its cross-attention keys and values (not yet running)."""
        model, settings = self.model, self.settings
        sentences = job.calls[job.next_call]
        token_ids = [job.speech.sentences[i].token_ids for i in sentences]
        inputs = self.tokenizer.pad([{"input_ids": list(ids)} for ids in token_ids], return_tensors="pt")
        # As `synthesize` and `generate_speech`: the call's bounds follow its longest sentence, and each
        # sentence is then cut to its own limit.
        encoder_length = inputs["input_ids"].shape[1]
        min_ratio, max_ratio = length_ratios(
            model, encoder_length, settings.min_len_ratio, settings.max_len_ratio
        )
        call = _Call(
            job,
            sentences,
            min_steps=int(encoder_length * min_ratio / self.reduction),
            max_steps=int(encoder_length * max_ratio / self.reduction),
            frame_limits=[max_frames(model, len(ids), max_ratio) for ids in token_ids],
            running=len(sentences),
        )
        mask = inputs["attention_mask"].to(self.device)
        encoded = model.speecht5.encoder(
            input_values=inputs["input_ids"].to(self.device), attention_mask=mask, return_dict=True
        ).last_hidden_state
        rows, length = encoded.shape[:2]
        cross_kv = torch.stack(
            [
                torch.stack([projection(encoded) for projection in (attn.k_proj, attn.v_proj)])
                for attn in (layer.encoder_attn for layer in model.speecht5.decoder.wrapped_decoder.layers)
            ]
        )
        cross_kv = cross_kv.view(*cross_kv.shape[:2], rows, length, self.heads, self.head_dim).transpose(3, 4)
        speaker = F.normalize(speaker_rows([job.speech.speaker], self.runtime))
        return call, _Prefill(cross_kv, mask.bool(), speaker.expand(rows, -1))

    def _add(self, call: _Call, prefill: _Prefill) -> None:
        """Start the prepared call in the first free slots (more room when there is none)."""
        ROWS_PER_CALL.labels("synthesis").observe(len(call.sentences))
        start, end = len(self.rows), len(self.rows) + len(call.sentences)
        slots, length = self.slots, prefill.cross_mask.shape[1]
        have_rows, have_length = slots.speakers.shape[0], slots.cross_mask.shape[1]
        if end > have_rows or length > have_length:
            self.slots = slots = slots.resized(
                max(end, 2 * have_rows) if end > have_rows else have_rows,
                cross_kv=(4, max(length, have_length)),
                cross_mask=(1, max(length, have_length)),
            )
        rows = slice(start, end)
        # Left-over values of earlier rows stay in the caches and frames: the self-attention mask hides
        # positions a row has not written, and the cross-attention mask the text positions it does not have.
        slots.cross_kv[:, :, rows, :, :length] = prefill.cross_kv
        slots.cross_mask[rows] = False
        slots.cross_mask[rows, :length] = prefill.cross_mask
        slots.speakers[rows] = prefill.speakers
        slots.last_frame[rows] = 0
        slots.positions[rows] = 0
        self.rows.extend((call, sentence) for sentence in call.sentences)

    def _free(self, rows: list[int]) -> None:
        """Stop these rows: the last running rows move into the freed slots, so the running ones stay first."""
        if not rows:
            return
        freed, running = set(rows), len(self.rows) - len(set(rows))
        targets = sorted(row for row in freed if row < running)
        sources = [row for row in range(running, len(self.rows)) if row not in freed]
        if targets:
            self.slots.move(targets, sources)
            for target, source in zip(targets, sources, strict=True):
                self.rows[target] = self.rows[source]
        del self.rows[running:]

    def _vocode(self, calls: list[_Call]) -> None:
        """Waveforms of the calls' sentences into their jobs' `ready`. The vocoder pads a call's spectrograms
        to its longest, which changes the last samples of the shorter ones a little, so calls share a vocoder
        batch only when they pad to the same length: each sentence then sounds exactly as in its own call."""
        by_length: dict[int, list[tuple[_Job, int, torch.Tensor]]] = {}
        for call in calls:
            stretched = [
                (call.job, sentence, stretch(call.spectrograms[sentence], call.job.speech.speed))
                for sentence in call.sentences
            ]
            by_length.setdefault(max(frames.shape[0] for *_, frames in stretched), []).extend(stretched)
        for rows in by_length.values():
            waveforms = vocode(self.vocoder, [frames for *_, frames in rows], [1.0] * len(rows))
            for (job, sentence, _), waveform in zip(rows, waveforms, strict=True):
                job.ready[sentence] = waveform

    def _complete(self, call: _Call) -> AudioResult | Exception | None:
        """Emit what is ready of a vocoded call in order and start the job's next call; the job's result
        once it has no call left."""
        job, sample_rate = call.job, self.vocoder.config.sampling_rate
        emit_in_order(job.work, job.ready, job.parts, self.settings.sentence_pause_ms, sample_rate)
        job.next_call += 1
        if job.next_call < len(job.calls):
            try:
                self._add(*self._prepare_call(job))
            except Exception as error:  # this job fails; the others decode on
                del self.jobs[job.work]
                return error
            return None
        del self.jobs[job.work]
        result = AudioResult(np.concatenate(job.parts), sample_rate, time.perf_counter() - job.started)
        observe("synthesis", result)
        return result

    # -- the decoder step -----------------------------------------------------------------------

    def _grow(self, positions: int) -> None:
        have = self.slots.self_kv.shape[4]
        if positions > have:
            size = max(positions, 2 * have)
            self.slots = self.slots.resized(self.slots.speakers.shape[0], self_kv=(4, size), frames=(1, size))

    def _dropout_masks(self) -> list[torch.Tensor]:
        """Each pre-net layer's dropout mask for every row, one mask per call, as `generate_speech` shares
        one mask among a call's rows. It draws only the newest frame's mask (`generate_speech` redraws one
        for every frame so far and uses the last): the same distribution at a constant cost per step. As in
        SpeechT5's pre-net, a unit is kept where the mask is 1, which it is with the dropout probability."""
        layers = len(self.model.speecht5.decoder.prenet.layers)
        calls = {call: index for index, call in enumerate(dict.fromkeys(call for call, _ in self.rows))}
        shape = torch.empty(layers, len(calls), self.prenet_units, device=self.device, dtype=self.dtype)
        drawn = torch.bernoulli(shape, self.dropout)
        for call in calls:
            call.steps += 1
        row_calls = torch.tensor([calls[call] for call, _ in self.rows], device=self.device)
        return list(drawn[:, row_calls])

    def _decode(self) -> list[bool]:
        """One step of every row; whether each row's stop probability reached the threshold."""
        model = self.model
        prenet = model.speecht5.decoder.prenet
        masks = self._dropout_masks()
        length = 1 + max(call.steps - 1 for call, _ in self.rows)  # positions in use after this step
        self._grow(length)
        state, rows = self.state, len(self.rows)
        positions = state.positions

        hidden = state.last_frame
        for layer, mask in zip(prenet.layers, masks, strict=True):
            hidden = F.relu(layer(hidden))
            hidden = torch.where(mask == 1, hidden, 0) * 1 / (1 - self.dropout)
        hidden = prenet.final_layer(hidden)
        hidden = hidden + prenet.encode_positions.alpha * prenet.encode_positions.pe[0, positions]
        hidden = F.relu(prenet.speaker_embeds_layer(torch.cat([hidden, state.speakers], dim=-1)))
        hidden = hidden[:, None]  # [rows, 1, hidden]

        row_index = torch.arange(rows, device=self.device)
        self_mask = (torch.arange(length, device=self.device)[None] <= positions[:, None])[:, None, None]
        cross_mask = state.cross_mask[:, None, None]
        for index, layer in enumerate(model.speecht5.decoder.wrapped_decoder.layers):
            attn = layer.self_attn
            keys, values = state.self_kv[index, 0], state.self_kv[index, 1]
            keys[row_index, :, positions] = attn.k_proj(hidden).view(rows, self.heads, self.head_dim)
            values[row_index, :, positions] = attn.v_proj(hidden).view(rows, self.heads, self.head_dim)
            attended = self._attend(attn, hidden, keys[:, :, :length], values[:, :, :length], self_mask)
            hidden = layer.self_attn_layer_norm(hidden + attended)
            cross = layer.encoder_attn
            attended = self._attend(
                cross, hidden, state.cross_kv[index, 0], state.cross_kv[index, 1], cross_mask
            )
            hidden = layer.encoder_attn_layer_norm(hidden + attended)
            hidden = layer.final_layer_norm(hidden + layer.feed_forward(hidden))

        output = hidden[:, 0]
        postnet = model.speech_decoder_postnet
        spectrum = postnet.feat_out(output)  # [rows, reduction * mel bins]
        state.frames[row_index, positions] = spectrum
        state.last_frame.copy_(spectrum[:, -self.mel_bins :])
        state.positions.add_(1)
        stop = torch.sigmoid(postnet.prob_out(output)).sum(dim=-1) >= self.settings.stop_threshold
        return stop.tolist()

    def _attend(self, attn, hidden, keys, values, mask) -> torch.Tensor:
        rows = hidden.shape[0]
        query = (attn.q_proj(hidden) * attn.scaling).view(rows, 1, self.heads, self.head_dim).transpose(1, 2)
        attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=1.0)
        return attn.out_proj(attended.transpose(1, 2).reshape(rows, 1, -1))
