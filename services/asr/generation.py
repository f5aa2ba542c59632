"""Whisper's generate() as the runner drives it: `WindowCapturingWhisper`, the transformers subclass that describes
each decoded 30 s window the way OpenAI's Whisper does (`Window`: seek, temperature, average log-probability,
compression ratio, no-speech probability), applies OpenAI's temperature-fallback thresholds (`FallbackRule`) and
hands back what generate() prepares before its first decoder pass (`GenerationSetup`, for the continuous decode
loop); `DecodeCapture` collects the windows of one call and `PartialTexts` turns them into streaming deltas."""

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList
from transformers.generation.utils import GenerateEncoderDecoderOutput

from .alignment import Aligner, TimedSegment, WordTiming, assign_words
from .domain import ASRJob, Partial, TokenLogprob
from .drafting import WhisperWithDraftLoop


class _ExpectedGenerateNotices(logging.Filter):
    """Drops two notices transformers logs once about settings made on purpose here: per-window outputs imply
    `return_segments` (see `DecodeCapture`), and `top_k=0` (sampling from the whole distribution, as OpenAI's
    Whisper does) is unused by the greedy first try of a temperature fallback."""

    NOTICES = ("automatically sets `return_segments=True`", "not valid and may be ignored: ['top_k']")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in self.NOTICES)


for _name in (
    "transformers.models.whisper.generation_whisper",
    "transformers.generation.configuration_utils",
):
    logging.getLogger(_name).addFilter(_ExpectedGenerateNotices())


def compression_ratio(text: str) -> float:
    """OpenAI Whisper's repetition measure: the text's UTF-8 bytes over their zlib-compressed size."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass(frozen=True)
class FallbackRule:
    """OpenAI Whisper's thresholds (transcribe.py): a window whose text compresses too well (repetition loops) or
    whose tokens are too improbable is decoded again at the next temperature, unless it is judged silent; a
    silent window (`<|nospeech|>` likely and its tokens improbable) is dropped."""

    compression_ratio: float | None
    logprob: float | None
    no_speech: float | None

    def judge(
        self, ratio: float, avg_logprob: float | None, no_speech_prob: float | None
    ) -> tuple[bool, bool]:
        """(decode the window again, drop it)."""
        improbable = self.logprob is not None and avg_logprob is not None and avg_logprob < self.logprob
        again = improbable or (self.compression_ratio is not None and ratio > self.compression_ratio)
        silent = self.no_speech is not None and no_speech_prob is not None and no_speech_prob > self.no_speech
        if silent and improbable:
            again = False
        confident = self.logprob is not None and avg_logprob is not None and avg_logprob > self.logprob
        return again, silent and not confident


@dataclass
class WindowSegment:
    start: float  # seconds from the start of the audio
    end: float
    tokens: list[int]  # timestamps included
    logprobs: list[float] | None  # one per token, when scores were kept
    words: list[WordTiming] | None = None


@dataclass
class Window:
    """One decoded 30 s window of one request, described as OpenAI's Whisper describes it."""

    seek: int  # mel frames (100 a second) before the window
    temperature: float  # the temperature of the decoding that was kept
    avg_logprob: float | None  # mean log-probability of its tokens and end-of-text (None: scores not kept)
    compression_ratio: float  # of its text
    no_speech_prob: float | None  # probability of <|nospeech|> right after <|startoftranscript|>
    segments: list[WindowSegment]


@dataclass
class DecodeCapture:
    """What one `transcribe` call reads out of Whisper's generate(), window by window and request by request
    (`rows` is the batch). The model's hooks fill in the per-call values: the no-speech probability at the first
    decoder pass, the encoder output when words are to be timed."""

    rows: int
    text_of: Callable[[list[int]], str]
    sot: int
    eot: int
    no_timestamps: int
    no_speech_token: int | None
    fallback: FallbackRule | None
    keep_scores: bool  # for log-probabilities: to report, or to judge windows by
    samples: bool  # some temperature is above 0
    languages: list[str]
    aligner: Aligner | None = None
    word_rows: frozenset[int] = frozenset()
    on_window: Callable[[int, Window], None] | None = None
    windows: list[list[Window]] = field(init=False)
    last_speech: list[float] = field(init=False)
    # Per generate() call (one per window, or per fallback temperature):
    awaiting_prefill: bool = True
    aligning: bool = False
    no_speech: list[float] | None = None
    encoder_hidden: torch.Tensor | None = None

    def __post_init__(self):
        self.windows = [[] for _ in range(self.rows)]
        self.last_speech = [0.0] * self.rows

    def add_window(
        self,
        segments: list[dict],
        *,
        seek_sequence,
        seek_outputs,
        time_offset,
        seek_num_frames,
        time_precision,
        input_stride,
        prev_idx,
        idx,
        decoder_input_ids,
        **_,
    ) -> None:
        row = seek_outputs[idx]
        tokens = seek_sequence.tolist()
        logprobs = row.get("token_logprobs")
        logprobs = logprobs[: len(tokens)].tolist() if logprobs is not None else None
        first = decoder_input_ids.shape[-1]  # segment positions count the window's prompt
        parts = []
        for segment in segments:
            begin, end = segment["idxs"][0] - first, segment["idxs"][1] - first
            parts.append(
                WindowSegment(
                    float(segment["start"]),
                    float(segment["end"]),
                    segment["tokens"].tolist(),
                    logprobs[begin:end] if logprobs is not None else None,
                )
            )
        offset = float(time_offset[prev_idx])
        window = Window(
            seek=round(offset * input_stride / time_precision),
            temperature=row["temperature"],
            avg_logprob=row.get("avg_logprob"),
            compression_ratio=row.get("compression_ratio", 0.0),
            no_speech_prob=row.get("no_speech_prob"),
            segments=parts,
        )
        encoder_hidden = row.pop("encoder_hidden", None)
        if prev_idx in self.word_rows and encoder_hidden is not None and self.aligner is not None:
            prompt = decoder_input_ids[idx].tolist()
            sot_sequence = [t for t in prompt[prompt.index(self.sot) :] if t != self.no_timestamps]
            self._time_words(
                window, offset, encoder_hidden, int(seek_num_frames[prev_idx]), sot_sequence, prev_idx
            )
        self.windows[prev_idx].append(window)
        if self.on_window is not None:
            self.on_window(prev_idx, window)

    def _time_words(
        self, window: Window, offset: float, encoder_hidden, num_frames: int, sot_sequence, row: int
    ):
        text_tokens = [[t for t in part.tokens if t < self.eot] for part in window.segments]
        self.aligning = True
        try:
            alignment = self.aligner.words(
                encoder_hidden,
                num_frames,
                sot_sequence,
                [t for part in text_tokens for t in part],
                self.languages[row],
            )
        finally:
            self.aligning = False
        timed = [
            TimedSegment(p.start, p.end, tokens)
            for p, tokens in zip(window.segments, text_tokens, strict=True)
        ]
        self.last_speech[row] = assign_words(alignment, timed, offset, self.last_speech[row])
        for part, segment in zip(window.segments, timed, strict=True):
            part.start, part.end, part.words = segment.start, segment.end, segment.words


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet (Whisper's too): every byte as a printable character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _token_logprobs(
    scores: tuple[torch.Tensor, ...], generated: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Log-probability of each generated token (rows x steps) under the processed scores at temperature 1, as
    OpenAI's Whisper sums them (the scores of a sampled step were divided by its temperature)."""
    steps = min(len(scores), generated.shape[1])
    scale = temperature if temperature > 0 else 1.0
    columns = [
        torch.log_softmax(scores[t].float() * scale, dim=-1).gather(-1, generated[:, t : t + 1])
        for t in range(steps)
    ]
    if not columns:
        return torch.zeros(generated.shape[0], 0)
    return torch.cat(columns, dim=1).cpu()


@dataclass(frozen=True)
class GenerationSetup:
    """What Whisper's generate() decides before its first decoder pass for one short clip: the decoder prompt
    (1 x n: prompt text and forced start tokens), the logits processors, the stopping criteria (end-of-text, the
    length limit) and the first timestamp token's id. The continuous decode loop decodes with these very objects."""

    prompt: torch.Tensor
    processors: LogitsProcessorList
    stopping: StoppingCriteriaList
    timestamp_begin: int


class WindowCapturingWhisper(WhisperWithDraftLoop):
    """Whisper (with the cheap draft loop of `drafting.py` once `drafter` is set) that decodes each window under
    one length limit and describes each decoded window into `capture` while one is set.

    Window descriptions hook into three steps of Whisper's generate() loop, per call of the underlying generate
    (one per window, and one per fallback temperature): `_postprocess_outputs` turns the scores into token
    log-probabilities and drops them (kept per row they would hold the whole vocabulary per step until the
    request ends), `_need_fallback` applies OpenAI's thresholds, and `_retrieve_segment` hands the kept window to
    the capture.
    """

    capture: DecodeCapture | None = None
    # Set while `ASRRunner.generation_setup` reads what generate() prepared: the greedy loop keeps the prompt,
    # processors and stopping criteria in `prepared` and ends the call before its first pass.
    reading_setup: bool = False
    prepared: tuple[torch.Tensor, LogitsProcessorList, StoppingCriteriaList] | None = None

    def _sample(self, input_ids, logits_processor, stopping_criteria, generation_config, **kwargs):
        if not self.reading_setup:
            return super()._sample(
                input_ids, logits_processor, stopping_criteria, generation_config, **kwargs
            )
        self.prepared = (input_ids, logits_processor, stopping_criteria)
        # What a decode that ended at once would give: end-of-text right after the prompt, nothing computed.
        ended = torch.cat(
            [input_ids, input_ids.new_full((input_ids.shape[0], 1), generation_config.eos_token_id)], 1
        )
        if generation_config.return_dict_in_generate:
            return GenerateEncoderDecoderOutput(
                sequences=ended, scores=() if generation_config.output_scores else None
            )
        return ended

    def _set_max_new_tokens_and_length(self, config, decoder_input_ids, generation_config):
        # Whisper sets each window's length limit here. Given max_new_tokens, the max_length its config preparation
        # always fills in is a second, conflicting limit (generate() warns about the pair every window): drop it.
        super()._set_max_new_tokens_and_length(config, decoder_input_ids, generation_config)
        if generation_config.max_new_tokens is not None:
            generation_config.max_length = None

    # -- window descriptions ---------------------------------------------------------------------------------

    def note_prefill(self, module, args, kwargs, output) -> None:
        """Decoder forward hook: at a call's first pass (its whole prompt), the probability of `<|nospeech|>` as
        the token after `<|startoftranscript|>`, from the unprocessed logits (OpenAI's `no_speech_prob`)."""
        capture = self.capture
        if capture is None or not capture.awaiting_prefill or capture.aligning:
            return
        capture.awaiting_prefill = False
        ids = kwargs.get("input_ids")
        if ids is None or capture.no_speech_token is None:
            return
        is_sot = ids == capture.sot
        if not bool(is_sot.any(dim=1).all()):
            return
        position = is_sot.int().argmax(dim=1)
        hidden = output[0][torch.arange(ids.shape[0], device=ids.device), position]
        probabilities = self.proj_out(hidden).float().softmax(dim=-1)
        capture.no_speech = probabilities[:, capture.no_speech_token].tolist()

    def note_encoder_output(self, module, args, output) -> None:
        """Encoder forward hook: keeps the window's encoder output for the word alignment pass."""
        capture = self.capture
        if capture is not None and capture.word_rows:
            capture.encoder_hidden = output[0]

    def _set_return_outputs(
        self, return_dict_in_generate, return_token_timestamps, logprob_threshold, generation_config
    ):
        # Per-row outputs for every call (what the capture reads), with the scores when they are needed; sampling
        # from the whole distribution as OpenAI's Whisper does (transformers' default keeps the top 50). Set on the
        # config here rather than passed to generate(), whose config check would call them unused beforehand.
        if self.capture is not None:
            generation_config.output_scores = self.capture.keep_scores
            if self.capture.samples:
                generation_config.top_k = 0
            return_dict_in_generate = True
        return super()._set_return_outputs(
            return_dict_in_generate, return_token_timestamps, logprob_threshold, generation_config
        )

    def _postprocess_outputs(self, seek_outputs, decoder_input_ids, generation_config, **kwargs):
        capture = self.capture
        if capture is not None and not isinstance(seek_outputs, torch.Tensor):
            temperature = float(generation_config.temperature) if generation_config.do_sample else 0.0
            logprobs = None
            if "scores" in seek_outputs:
                generated = seek_outputs["sequences"][:, decoder_input_ids.shape[-1] :]
                logprobs = _token_logprobs(seek_outputs["scores"], generated, temperature)
            seek_outputs = {
                key: value for key, value in seek_outputs.items() if key not in ("scores", "cache")
            }
        sequences, rows = super()._postprocess_outputs(
            seek_outputs=seek_outputs,
            decoder_input_ids=decoder_input_ids,
            generation_config=generation_config,
            **kwargs,
        )
        if capture is None or isinstance(seek_outputs, torch.Tensor):
            return sequences, rows
        no_speech, encoder_hidden = capture.no_speech, capture.encoder_hidden
        for i, row in enumerate(rows):
            row["temperature"] = temperature
            row["token_logprobs"] = logprobs[i] if logprobs is not None else None
            row["no_speech_prob"] = (
                no_speech[i] if no_speech is not None and len(no_speech) == len(rows) else None
            )
            if encoder_hidden is not None and encoder_hidden.shape[0] == len(rows):
                row["encoder_hidden"] = encoder_hidden[i]
        capture.awaiting_prefill, capture.no_speech, capture.encoder_hidden = True, None, None
        return sequences, rows

    def _need_fallback(
        self, seek_sequence, seek_outputs, index, logits_processor, generation_config, vocab_size, temperature
    ):
        capture = self.capture
        if capture is None:
            return super()._need_fallback(
                seek_sequence,
                seek_outputs,
                index,
                logits_processor,
                generation_config,
                vocab_size,
                temperature,
            )
        row = seek_outputs[index]
        tokens = seek_sequence.tolist()  # end-of-text included when it was generated
        logprobs = row["token_logprobs"]
        avg_logprob = float(logprobs[: len(tokens)].mean()) if logprobs is not None and len(tokens) else None
        ratio = compression_ratio(capture.text_of(tokens))
        row["avg_logprob"], row["compression_ratio"] = avg_logprob, ratio
        if capture.fallback is None:
            return False, False
        return capture.fallback.judge(ratio, avg_logprob, row["no_speech_prob"])

    def _retrieve_segment(self, **kwargs):
        segments, seek_offset = super()._retrieve_segment(**kwargs)
        if self.capture is not None:
            self.capture.add_window(segments, **kwargs)
        return segments, seek_offset


class PartialTexts:
    """A window callback that sends each streaming request of a batch the text its transcript gained: `text_of`
    decodes token ids (special tokens skipped), `token_logprob` describes one token as OpenAI reports it, `eot` is
    end-of-text (the tokens from it on are special)."""

    def __init__(
        self,
        jobs: list[ASRJob],
        on_partial: Callable[[int, Partial], None],
        *,
        text_of: Callable[[list[int]], str],
        token_logprob: Callable[[int, float], TokenLogprob],
        eot: int,
    ):
        self.jobs, self.on_partial = jobs, on_partial
        self.text_of, self.token_logprob, self.eot = text_of, token_logprob, eot
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent = [""] * len(jobs)

    def __call__(self, row: int, window: Window) -> None:
        job = self.jobs[row]
        if not job.stream:
            return
        for part in window.segments:
            self.tokens[row].extend(part.tokens)
        # A character split across windows waits for its last byte, and trailing whitespace for the text after it
        # (the transcript's text is stripped: a delta must not send what it drops).
        text = self._text(row).strip()
        while text.endswith("\ufffd"):
            text = text[:-1].rstrip()
        logprobs = None
        if job.logprobs:
            logprobs = tuple(
                self.token_logprob(token, logprob)
                for part in window.segments
                for token, logprob in zip(part.tokens, part.logprobs or (), strict=False)
                if token < self.eot
            )
        self._send(row, text, logprobs)

    def finish(self) -> None:
        """Whatever was held back, so that the deltas add up to each transcript's text."""
        for row, job in enumerate(self.jobs):
            text = self._text(row).strip()
            if job.stream and text != self.sent[row] and text.startswith(self.sent[row]):
                self._send(row, text, () if job.logprobs else None)

    def _text(self, row: int) -> str:
        return self.text_of(self.tokens[row])

    def _send(self, row: int, text: str, logprobs) -> None:
        delta, self.sent[row] = text[len(self.sent[row]) :], text
        self.on_partial(row, Partial(delta, logprobs))
