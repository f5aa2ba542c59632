"""Whisper runner: a main model, a speculative-decoding assistant, and load-adaptive batch decoding. No web code.

Assisted (speculative) decoding lets a small assistant draft tokens that the main model checks in one forward
pass; greedy output is exactly the main model's own. It only pays at batch size 1, so `predict_batch` looks at
how many requests the batcher handed over: a few are decoded one by one with the assistant, more than
`adaptive_threshold` together in one plain batched generate.

Each decoded 30 s window is also described the way OpenAI's Whisper describes it (`Window`): its seek offset, the
temperature that produced it, the average log-probability of its tokens, the compression ratio of its text and
the probability of `<|nospeech|>` at the start of the transcript. Optional temperature fallback re-decodes a
window that fails OpenAI's thresholds, and word timings come from a cross-attention alignment pass per window
(`alignment.py`), whichever path decoded it.
"""

import logging
import time
import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    StoppingCriteriaList,
    SuppressTokensAtBeginLogitsProcessor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE
from transformers.utils import cached_file

from services.kit import tracing
from services.kit.batcher import Work
from services.kit.continuous import DecodeLoop
from services.kit.errors import Cancelled, InvalidArgument
from services.kit.torch_models import StopWhenCancelled, TorchRuntime, resolve_source

from . import metrics
from .alignment import Aligner, TimedSegment, WordTiming, assign_words
from .drafting import DraftConfig, Drafter, WhisperWithDraftLoop
from .settings import ASRSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DecodingPath = Literal["assisted", "plain"]


class _ExpectedGenerateNotices(logging.Filter):
    """Drops two notices transformers logs once about settings made on purpose here: per-window outputs imply
    `return_segments` (see `DecodeCapture`), and `top_k=0` (sampling from the whole distribution, as OpenAI's
    Whisper does) is unused by the greedy first try of a temperature fallback."""

    NOTICES = ("automatically sets `return_segments=True`", "not valid and may be ignored: ['top_k']")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in self.NOTICES)


for _name in ("transformers.models.whisper.generation_whisper", "transformers.generation.configuration_utils"):
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

    def judge(self, ratio: float, avg_logprob: float | None, no_speech_prob: float | None) -> tuple[bool, bool]:
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

    def add_window(self, segments: list[dict], *, seek_sequence, seek_outputs, time_offset, seek_num_frames,
                   time_precision, input_stride, prev_idx, idx, decoder_input_ids, **_) -> None:
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
            self._time_words(window, offset, encoder_hidden, int(seek_num_frames[prev_idx]), sot_sequence, prev_idx)
        self.windows[prev_idx].append(window)
        if self.on_window is not None:
            self.on_window(prev_idx, window)

    def _time_words(self, window: Window, offset: float, encoder_hidden, num_frames: int, sot_sequence, row: int):
        text_tokens = [[t for t in part.tokens if t < self.eot] for part in window.segments]
        self.aligning = True
        try:
            alignment = self.aligner.words(
                encoder_hidden, num_frames, sot_sequence, [t for part in text_tokens for t in part],
                self.languages[row],
            )
        finally:
            self.aligning = False
        timed = [TimedSegment(p.start, p.end, tokens) for p, tokens in zip(window.segments, text_tokens, strict=True)]
        self.last_speech[row] = assign_words(alignment, timed, offset, self.last_speech[row])
        for part, segment in zip(window.segments, timed, strict=True):
            part.start, part.end, part.words = segment.start, segment.end, segment.words


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet (Whisper's too): every byte as a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _token_logprobs(scores: tuple[torch.Tensor, ...], generated: torch.Tensor, temperature: float) -> torch.Tensor:
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


class _SetupRead(Exception):
    """Ends a generate() call that was only made to read its `GenerationSetup`."""

    def __init__(self, prompt: torch.Tensor, processors: LogitsProcessorList, stopping: StoppingCriteriaList):
        super().__init__("generation setup read")
        self.prompt, self.processors, self.stopping = prompt, processors, stopping


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
    # Set while `ASRRunner.generation_setup` reads what generate() prepared: the greedy loop stops before its
    # first pass.
    reading_setup: bool = False

    def _sample(self, input_ids, logits_processor, stopping_criteria, generation_config, **kwargs):
        if self.reading_setup:
            raise _SetupRead(input_ids, logits_processor, stopping_criteria)
        return super()._sample(input_ids, logits_processor, stopping_criteria, generation_config, **kwargs)

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

    def _set_return_outputs(self, return_dict_in_generate, return_token_timestamps, logprob_threshold,
                            generation_config):
        # Per-row outputs for every call (what the capture reads), with the scores when they are needed; sampling
        # from the whole distribution as OpenAI's Whisper does (transformers' default keeps the top 50). Set on the
        # config here rather than passed to generate(), whose config check would call them unused beforehand.
        if self.capture is not None:
            generation_config.output_scores = self.capture.keep_scores
            if self.capture.samples:
                generation_config.top_k = 0
            return_dict_in_generate = True
        return super()._set_return_outputs(return_dict_in_generate, return_token_timestamps, logprob_threshold,
                                           generation_config)

    def _postprocess_outputs(self, seek_outputs, decoder_input_ids, return_token_timestamps, generation_config,
                             is_shortform, seek, batch_idx_map):
        capture = self.capture
        if capture is None or isinstance(seek_outputs, torch.Tensor):
            return super()._postprocess_outputs(seek_outputs, decoder_input_ids, return_token_timestamps,
                                                generation_config, is_shortform, seek, batch_idx_map)
        temperature = float(generation_config.temperature) if generation_config.do_sample else 0.0
        logprobs = None
        if "scores" in seek_outputs:
            generated = seek_outputs["sequences"][:, decoder_input_ids.shape[-1] :]
            logprobs = _token_logprobs(seek_outputs["scores"], generated, temperature)
        kept = {key: value for key, value in seek_outputs.items() if key not in ("scores", "cache")}
        sequences, rows = super()._postprocess_outputs(kept, decoder_input_ids, return_token_timestamps,
                                                       generation_config, is_shortform, seek, batch_idx_map)
        no_speech, encoder_hidden = capture.no_speech, capture.encoder_hidden
        for i, row in enumerate(rows):
            row["temperature"] = temperature
            row["token_logprobs"] = logprobs[i] if logprobs is not None else None
            row["no_speech_prob"] = no_speech[i] if no_speech is not None and len(no_speech) == len(rows) else None
            if encoder_hidden is not None and encoder_hidden.shape[0] == len(rows):
                row["encoder_hidden"] = encoder_hidden[i]
        capture.awaiting_prefill, capture.no_speech, capture.encoder_hidden = True, None, None
        return sequences, rows

    def _need_fallback(self, seek_sequence, seek_outputs, index, logits_processor, generation_config, vocab_size,
                       temperature):
        capture = self.capture
        if capture is None:
            return super()._need_fallback(seek_sequence, seek_outputs, index, logits_processor, generation_config,
                                          vocab_size, temperature)
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


@dataclass(frozen=True)
class DecodeOptions:
    """Settings every request in one batch shares (the language may differ per request)."""

    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: str | None = None
    timestamps: bool = False
    temperature: float = 0.0


@dataclass(frozen=True, eq=False)
class ASRJob:
    audio: np.ndarray  # float32 mono at 16 kHz
    options: DecodeOptions = DecodeOptions()
    language: str | None = None  # a Whisper language code; None detects it
    decoding: Literal["auto", "assisted", "plain"] = "auto"
    # What the response needs beyond text and segments; none of it changes the tokens, so it stays out of the
    # batch key: per-window statistics (log-probabilities), word timings, token log-probabilities, and
    # `Partial` events as windows finish.
    window_stats: bool = False
    words: bool = False
    logprobs: bool = False
    stream: bool = False
    # Voice-activity chunking (chunking.ChunkingOptions): the speech is cut into chunks decoded as one batch.
    chunking: Hashable | None = None

    @property
    def duration(self) -> float:
        return self.audio.size / SAMPLE_RATE

    @property
    def nbytes(self) -> int:
        """The decoded samples it holds while queued."""
        return self.audio.nbytes

    @property
    def long_form(self) -> bool:
        return self.audio.size > 30 * SAMPLE_RATE

    @property
    def batch_key(self) -> tuple:
        # Long-form decoding predicts timestamps and seeks through 30 s windows, so it never shares a batch with
        # short clips. `auto` requests batch together; a forced path only batches with the same force.
        return (self.options, self.long_form, None if self.decoding == "auto" else self.decoding, self.chunking)


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    # OpenAI's per-window decoding statistics (every segment of a window shares them). Float noise between the
    # decoding paths must not make equal segmentations differ, so they stay out of comparisons.
    seek: int = field(default=0, compare=False)
    temperature: float = field(default=0.0, compare=False)
    avg_logprob: float | None = field(default=None, compare=False)
    compression_ratio: float = field(default=0.0, compare=False)
    no_speech_prob: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    bytes: tuple[int, ...]
    logprob: float


@dataclass(frozen=True)
class Partial:
    """What a request's transcript gained when one of its windows was decoded: a streaming event."""

    delta: str
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str  # Whisper language code, given or detected
    duration: float
    path: DecodingPath
    tokens: tuple[int, ...]  # generated token ids (timestamps included), for exactness checks
    segments: list[Segment] | None = None
    words: list[Word] | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass
class _Features:
    input_features: torch.Tensor
    attention_mask: torch.Tensor | None


@dataclass
class ASRRunner:
    settings: ASRSettings
    runtime: TorchRuntime | None = None
    processor: WhisperProcessor | None = None
    model: WindowCapturingWhisper | None = None
    assistant: torch.nn.Module | None = None
    main_passes: int = 0  # forward passes of the main model's decoder, start-up work excluded
    # The checkpoint's length limit (Whisper: tokens per 30 s window), taken out of its generation config at load.
    model_max_length: int | None = None
    aligner: Aligner | None = None
    no_speech_token: int | None = None  # <|nospeech|> (<|nocaptions|> in the original multilingual vocabularies)
    _byte_values: dict[str, int] = field(default_factory=dict)  # byte-level BPE character -> byte

    # -- loading ----------------------------------------------------------------------------------------------

    def load(self) -> None:
        s = self.settings
        self.runtime = TorchRuntime(s.device, s.dtype, s.threads, s.few_row_linears)
        source = resolve_source(s.model)
        self.processor = WhisperProcessor.from_pretrained(source)
        self.model = self.runtime.load(WindowCapturingWhisper, source)
        # Each call passes its own length limit (see `_generate_kwargs`); a max_length left in the model's config
        # would be a second limit that generate() warns about on every window.
        config = self.model.generation_config
        self.model_max_length = config.max_length or self.model.config.max_target_positions
        config.max_length = None
        self.model.model.decoder.register_forward_hook(self._count_main_pass)
        self.model.model.decoder.register_forward_hook(self.model.note_prefill, with_kwargs=True)
        self.model.model.encoder.register_forward_hook(self.model.note_encoder_output)
        tokenizer = self.processor.tokenizer
        vocabulary = tokenizer.get_vocab()
        self.no_speech_token = next((vocabulary[t] for t in ("<|nospeech|>", "<|nocaptions|>") if t in vocabulary), None)
        self.aligner = Aligner(self.model, tokenizer)
        self._byte_values = {char: byte for byte, char in _bytes_to_unicode().items()}
        if s.assistant_model:
            self.assistant = self._load_assistant(resolve_source(s.assistant_model))
            overrides = dict(vocab_size=s.draft_vocab_size, quantize=s.draft_quantize)
            if s.draft_tokens is not None:
                overrides["num_tokens"] = s.draft_tokens
            if s.draft_confidence is not None:
                overrides["confidence_threshold"] = s.draft_confidence or None
            draft = DraftConfig.from_assistant(self.assistant, **overrides)
            self.model.drafter = Drafter.build(self.model, self.assistant, self.processor.tokenizer, draft)
            # After the drafter is built: its int8 copy quantizes only stock nn.Linear layers.
            self.runtime.tune_for_decoding(self.assistant)
            self.runtime.tune_for_decoding(self.model.drafter.head)  # its own fp32 head, when not int8
        self.runtime.tune_for_decoding(self.model)
        log.info("loaded %s with assistant %s", s.model, s.assistant_model or "none")

    def _load_assistant(self, source: str) -> torch.nn.Module:
        config = AutoConfig.from_pretrained(source)
        main = self.model.config
        if config.vocab_size != main.vocab_size:
            raise ValueError(
                f"assistant {self.settings.assistant_model} has a vocabulary of {config.vocab_size} tokens but the "
                f"main model {self.settings.model} has {main.vocab_size}: speculative decoding needs the same "
                "tokenizer (set ASR_ASSISTANT_MODEL to a matching model, or to '' to run without one)"
            )
        # Distil-style decoders may ship without a tokenizer; when one is there, its ids must match exactly.
        has_tokenizer = cached_file(
            source, "tokenizer_config.json", _raise_exceptions_for_missing_entries=False
        )
        if (
            has_tokenizer
            and AutoTokenizer.from_pretrained(source).get_vocab() != self.processor.tokenizer.get_vocab()
        ):
            raise ValueError(
                f"assistant {self.settings.assistant_model} uses a different tokenizer from the main model "
                f"{self.settings.model}: speculative decoding needs identical token ids"
            )
        if config.is_encoder_decoder:  # a smaller full Whisper with its own encoder
            return self.runtime.load(WhisperForConditionalGeneration, source)
        if config.d_model != main.d_model:
            raise ValueError(
                f"assistant {self.settings.assistant_model} is a decoder of width {config.d_model} but reads the "
                f"main encoder's outputs of width {main.d_model}"
            )
        return self.runtime.load(AutoModelForCausalLM, source)

    @property
    def window_tokens(self) -> int:
        """The most tokens decoded per 30 s window: the configured cap, else the model's own limit."""
        return self.settings.max_new_tokens or self.model_max_length

    @property
    def max_prompt_tokens(self) -> int:
        """Prompt tokens a request may give: Whisper conditions on at most half its decoder positions (OpenAI's
        decoder keeps the last 223 tokens), and a window still needs room for its start tokens and its own."""
        positions = self.model.config.max_target_positions
        return min(positions // 2 - 1, positions - 4 - (self.settings.max_new_tokens or 0))

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.processor.get_prompt_ids(prompt))

    def cost(self, job: ASRJob) -> float:
        """The job's work in audio-second-tokens: seconds of audio x the tokens each 30 s window may take."""
        return job.duration * self.window_tokens

    def _count_main_pass(self, module, args, output) -> None:
        self.main_passes += 1

    def draft_counts(self) -> tuple[int, int]:
        """(drafted, accepted) tokens since load; the drafter is the one place that counts them."""
        if self.model.drafter is None:
            return 0, 0
        drafted, accepted, _ = self.model.drafter.counters()
        return drafted, accepted

    def warmup(self) -> None:
        clip = np.zeros(SAMPLE_RATE, dtype=np.float32)
        for path in ("assisted", "plain") if self.assistant is not None else ("plain",):
            self.transcribe([ASRJob(clip, language="en")], path, max_new_tokens=4, record=False)
        # Start-up work stays out of the served totals.
        self.main_passes = 0

    # -- requests ---------------------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        """The Hub id, or a local directory's name."""
        model = self.settings.model
        return Path(model).name if Path(model).is_dir() else model

    @property
    def has_assistant(self) -> bool:
        return self.assistant is not None

    @property
    def multilingual(self) -> bool:
        """English-only checkpoints (whisper-*.en) take neither a language nor a task token."""
        config = self.model.generation_config
        return bool(getattr(config, "is_multilingual", False) and getattr(config, "lang_to_id", None))

    def language_code(self, language: str | None) -> str | None:
        """'en', 'English' or '<|en|>' -> 'en'; refuses languages the model does not know."""
        if language is None or not language.strip():
            return None
        name = language.strip().lower().removeprefix("<|").removesuffix("|>")
        code = TO_LANGUAGE_CODE.get(name, name)
        if not self.multilingual:
            if code == "en":
                return None
            raise InvalidArgument(f"language: model {self.model_id} is English-only", field="language")
        if f"<|{code}|>" not in self.model.generation_config.lang_to_id:
            raise InvalidArgument(
                f"language: unknown language {language!r}; use an ISO 639-1 code such as 'en' or 'de'",
                field="language",
            )
        return code

    @staticmethod
    def language_name(code: str) -> str:
        return LANGUAGES.get(code, code)

    def choose_path(self, jobs: list[ASRJob], queued: int = 0) -> DecodingPath:
        """The path for these jobs (one batch key) given the load: the jobs plus the `queued` requests behind
        them (the kit's `Work.queue_depth`)."""
        forced = jobs[0].decoding  # the batch key keeps forced paths apart
        if forced != "auto":
            return forced
        if self.assistant is None:
            return "plain"
        # Alone, the assistant is faster for the request and frees the model sooner, whatever waits behind it.
        if len(jobs) == 1:
            return "assisted"
        waiting = len(jobs) + queued
        return "assisted" if waiting <= self.settings.adaptive_threshold else "plain"

    # -- continuous batching (continuous.py) -------------------------------------------------------------------

    def step_decodable(self, job: ASRJob, waiting: int = 1) -> bool:
        """Whether the job decodes exactly in a continuous decode loop: one 30 s window, greedy with no
        temperature fallback (a re-decode would sample), on the plain path. An `auto` request keeps the
        assistant when one is loaded and at most `adaptive_threshold` requests wait (`waiting`, this one
        included), as `choose_path` decides: alone the assistant is faster; under load the plain path's
        batches are."""
        if not self.settings.continuous_batching or job.long_form or job.chunking is not None:
            return False
        if self.temperatures(job.options) != (0.0,):
            return False
        if job.decoding == "auto" and self.assistant is not None:
            return waiting > self.settings.adaptive_threshold
        return job.decoding in ("plain", "auto")

    def open_loop(self, key: Hashable, payload: ASRJob, waiting: int = 1) -> DecodeLoop | None:
        """A continuous decode loop for the batch key of `payload`, or None: whole-request decoding."""
        if not self.step_decodable(payload, waiting):
            return None
        from .continuous import PlainDecodeLoop  # the loop builds on this module

        return PlainDecodeLoop(self)

    def rows(self, payload: ASRJob) -> int:
        return 1

    def generation_setup(
        self, job: ASRJob, language: str, features: torch.Tensor, encoder_outputs: BaseModelOutput
    ) -> GenerationSetup:
        """What Whisper's generate() makes of a short clip given the arguments `transcribe([job], "plain")` passes
        it, read just before its first decoder pass (given the encoder's outputs, it computes nothing)."""
        kwargs = self._generate_kwargs([job], "plain", None)
        if self.multilingual:
            kwargs.update(task=job.options.task, language=language)
        self.model.reading_setup = True
        try:
            self.model.generate(features, encoder_outputs=encoder_outputs, **kwargs)
        except _SetupRead as read:
            config = self.model.generation_config
            timestamp_begin = getattr(config, "no_timestamps_token_id", self.model.config.vocab_size) + 1
            return GenerationSetup(read.prompt, read.processors, read.stopping, timestamp_begin)
        finally:
            self.model.reading_setup = False
        raise RuntimeError("generate() returned without reaching its greedy loop")

    def _transcribe_chunked(self, work: Work) -> Transcript | Exception:
        from .chunking import transcribe_chunked  # chunking builds on this module

        work.span.set_attribute("asr.path", "chunked")
        try:
            return transcribe_chunked(self, work.payload, work.payload.chunking, stop=StopWhenCancelled([work]))
        except Cancelled as exc:
            return exc
        except Exception as exc:  # one bad request must not fail its neighbours
            log.exception("chunked transcription failed")
            return exc

    def predict_batch(self, works: list[Work]) -> list[Transcript | Exception]:
        results: dict[int, Transcript | Exception] = {
            id(work): Cancelled("request was cancelled before decoding") for work in works
        }
        pending = [work for work in works if work.payload.chunking is None]
        for work in works:
            if work.payload.chunking is not None:
                results[id(work)] = self._transcribe_chunked(work)
        while pending := [work for work in pending if not work.cancelled]:
            # Re-decided before each assisted decode: if requests piled up meanwhile, the rest of this batch is
            # decoded together instead.
            if self.choose_path([work.payload for work in pending], pending[0].queue_depth) == "plain":
                for work in pending:
                    work.span.set_attribute("asr.path", "plain")
                try:
                    transcripts = self.transcribe(
                        [work.payload for work in pending],
                        "plain",
                        stop=StopWhenCancelled(pending),
                        on_partial=lambda row, partial, works=tuple(pending): works[row].emit(partial),
                    )
                except Cancelled:  # every request of the batch went away mid-decode
                    break
                results.update(
                    (id(work), transcript) for work, transcript in zip(pending, transcripts, strict=True)
                )
                break
            work = pending.pop(0)
            drafted, accepted = self.draft_counts()
            try:  # assisted generate decodes one sequence at a time
                with tracing.activate(work.span):  # its draft rounds become events of this request's span
                    stop = StopWhenCancelled([work])
                    results[id(work)] = self.transcribe(
                        [work.payload], "assisted", stop=stop, on_partial=lambda _, partial, work=work: work.emit(partial)
                    )[0]
                drafted_now, accepted_now = self.draft_counts()
                work.span.set_attributes({"asr.path": "assisted", "asr.draft.tokens": drafted_now - drafted,
                                          "asr.draft.accepted": accepted_now - accepted})
            except Cancelled:
                continue
            except Exception as exc:  # one bad request must not fail its neighbours
                log.exception("assisted transcription failed")
                results[id(work)] = exc
        return [results[id(work)] for work in works]

    # -- decoding ---------------------------------------------------------------------------------------------

    def _features(self, jobs: list[ASRJob]) -> _Features:
        audio = [job.audio for job in jobs]
        extractor = self.processor.feature_extractor
        if jobs[0].long_form:
            # Sequential long-form decoding needs the whole audio and a mask of where each clip ends. Each clip
            # is featurised alone: padding the waveforms together would change the STFT frames at a clip's end,
            # and a batched transcript must be the one the clip gets alone. Whisper never reads past the mask.
            items = [
                extractor(
                    clip,
                    sampling_rate=SAMPLE_RATE,
                    return_tensors="pt",
                    truncation=False,
                    padding="longest",
                    return_attention_mask=True,
                )
                for clip in audio
            ]
            frames = max(item.input_features.shape[-1] for item in items)
            features = torch.cat(
                [F.pad(item.input_features, (0, frames - item.input_features.shape[-1])) for item in items]
            )
            mask = torch.cat(
                [F.pad(item.attention_mask, (0, frames - item.attention_mask.shape[-1])) for item in items]
            )
            return _Features(
                features.to(self.runtime.device, self.runtime.dtype), mask.to(self.runtime.device)
            )
        # Short clips are each padded to Whisper's 30 s window, alone or in a batch.
        features = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        return _Features(features.to(self.runtime.device, self.runtime.dtype), None)

    def _detect_languages(
        self, jobs: list[ASRJob], features: torch.Tensor, encoder_outputs: BaseModelOutput | None = None
    ) -> list[str]:
        """Given languages as they are; the rest detected from the first 30 s, as Whisper's generate would (from
        `encoder_outputs` when the features were encoded already: the same encoder pass)."""
        if not self.multilingual:
            return ["en"] * len(jobs)
        missing = [i for i, job in enumerate(jobs) if job.language is None]
        languages = [job.language for job in jobs]
        if missing:
            id_to_code = {i: tok[2:-2] for tok, i in self.model.generation_config.lang_to_id.items()}
            if encoder_outputs is not None:
                encoded = BaseModelOutput(last_hidden_state=encoder_outputs.last_hidden_state[missing])
                detected = self.model.detect_language(encoder_outputs=encoded)
            else:
                detected = self.model.detect_language(input_features=features[missing])
            for i, lang_id in zip(missing, detected.tolist(), strict=True):
                languages[i] = id_to_code[lang_id]
        return languages

    def temperatures(self, options: DecodeOptions) -> tuple[float, ...]:
        """The request's temperature, then the configured fallback temperatures above it."""
        return (options.temperature, *(t for t in self.settings.fallback_temperatures if t > options.temperature))

    def _generate_kwargs(self, jobs: list[ASRJob], path: DecodingPath, max_new_tokens: int | None) -> dict:
        options = jobs[0].options
        kwargs = dict(return_timestamps=options.timestamps or jobs[0].long_form, num_beams=1)
        if options.timestamps:
            kwargs["return_segments"] = True
        temperatures = self.temperatures(options)
        kwargs["temperature"] = temperatures if len(temperatures) > 1 else options.temperature
        if options.prompt:
            kwargs["prompt_ids"] = self.processor.get_prompt_ids(options.prompt, return_tensors="pt").to(
                self.runtime.device
            )
        max_new_tokens = max_new_tokens or self.settings.max_new_tokens
        if max_new_tokens:
            kwargs["max_new_tokens"] = max_new_tokens
        else:
            kwargs["max_length"] = self.model_max_length
        if path == "assisted":
            kwargs["assistant_model"] = self.assistant
            # Whisper's generate drops the begin-suppression when an assistant is present (the assistant must be
            # free to draft end-of-text). Put it back as an explicit processor so that the main model's choice is
            # constrained exactly as in plain decoding; Whisper moves its begin index to each window's start.
            begin_suppress = self.model.generation_config.begin_suppress_tokens
            if begin_suppress:
                kwargs["logits_processor"] = LogitsProcessorList(
                    [
                        SuppressTokensAtBeginLogitsProcessor(
                            begin_suppress, begin_index=0, device=self.runtime.device
                        )
                    ]
                )
        return kwargs

    def _capture(self, jobs: list[ASRJob], languages: list[str]) -> DecodeCapture:
        s, tokenizer = self.settings, self.processor.tokenizer
        config = self.model.generation_config
        fallback = None
        if s.fallback_temperatures:
            fallback = FallbackRule(s.compression_ratio_threshold, s.logprob_threshold, s.no_speech_threshold)
        capture = DecodeCapture(
            rows=len(jobs),
            text_of=lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True).strip(),
            sot=config.decoder_start_token_id,
            eot=tokenizer.eos_token_id,
            no_timestamps=config.no_timestamps_token_id,
            no_speech_token=self.no_speech_token,
            fallback=fallback,
            keep_scores=fallback is not None or any(job.window_stats or job.logprobs for job in jobs),
            samples=max(self.temperatures(jobs[0].options)) > 0,
            languages=languages,
            aligner=self.aligner,
            word_rows=frozenset(i for i, job in enumerate(jobs) if job.words),
        )
        return capture

    @torch.inference_mode()
    def transcribe(
        self,
        jobs: list[ASRJob],
        path: DecodingPath,
        max_new_tokens: int | None = None,
        record: bool = True,
        stop: StopWhenCancelled | None = None,
        on_partial: Callable[[int, Partial], None] | None = None,
    ) -> list[Transcript]:
        """Decode jobs sharing a batch key; assisted decoding takes exactly one job.

        `stop` ends decoding within a step once every request is cancelled, and raises `Cancelled` before the
        next 30 s window of long-form audio. `on_partial(job index, Partial)` is called for streaming jobs as
        each of their windows is decoded.
        """
        if path == "assisted" and (len(jobs) != 1 or self.assistant is None):
            raise ValueError("assisted decoding needs an assistant model and exactly one job")
        started = time.perf_counter()
        passes_before, drafts_before = self.main_passes, self.draft_counts()
        features = self._features(jobs)
        languages = self._detect_languages(jobs, features.input_features)
        kwargs = self._generate_kwargs(jobs, path, max_new_tokens)
        if features.attention_mask is not None:
            kwargs["attention_mask"] = features.attention_mask
        if self.multilingual:
            kwargs.update(task=jobs[0].options.task, language=languages if len(jobs) > 1 else languages[0])
        if stop is not None:
            kwargs.update(stopping_criteria=[stop], monitor_progress=stop.check)
        capture = self._capture(jobs, languages)
        partials = None
        if on_partial is not None and any(job.stream for job in jobs):
            partials = capture.on_window = _PartialTexts(self, jobs, on_partial)
        self.model.capture = capture
        try:
            self.model.generate(features.input_features, **kwargs)
        finally:
            self.model.capture = None
        if partials is not None:
            partials.finish()
        transcripts = [
            self._transcript(job, language, capture.windows[i], path)
            for i, (job, language) in enumerate(zip(jobs, languages, strict=True))
        ]
        if record:
            self._record(path, transcripts, time.perf_counter() - started, passes_before, drafts_before)
        return transcripts

    def token_logprob(self, token: int, logprob: float) -> TokenLogprob:
        """A token as OpenAI reports log-probabilities: its text, its UTF-8 bytes (a piece of a character
        decodes to U+FFFD on its own), its log-probability."""
        piece = self.processor.tokenizer.convert_ids_to_tokens(token)
        raw = bytes(self._byte_values[c] for c in piece) if all(c in self._byte_values for c in piece) else piece.encode()
        return TokenLogprob(raw.decode("utf-8", errors="replace"), tuple(raw), round(logprob, 6))

    def _transcript(self, job: ASRJob, language: str, windows: list[Window], path: DecodingPath) -> Transcript:
        tokenizer = self.processor.tokenizer
        eot = tokenizer.eos_token_id
        ids: list[int] = []
        segments: list[Segment] = []
        words: list[Word] = []
        logprobs: list[TokenLogprob] = []
        for window in windows:
            for part in window.segments:
                ids.extend(part.tokens)
                if job.logprobs and part.logprobs is not None:
                    logprobs.extend(
                        self.token_logprob(t, lp) for t, lp in zip(part.tokens, part.logprobs, strict=True) if t < eot
                    )
                for timing in part.words or ():
                    # A token that is only a space is a "word" to the aligner; OpenAI lists no empty words.
                    if not (word := timing.word.strip()):
                        continue
                    start = min(timing.start, job.duration)
                    words.append(Word(word, round(start, 2), round(min(max(timing.end, start), job.duration), 2)))
                text = tokenizer.decode(part.tokens, skip_special_tokens=True).strip()
                if not job.options.timestamps or not text:
                    continue
                start, end = part.start, min(part.end, job.duration)
                segments.append(
                    Segment(
                        round(start, 2),
                        round(max(end, start), 2),
                        text,
                        tuple(part.tokens),
                        seek=window.seek,
                        temperature=window.temperature,
                        avg_logprob=window.avg_logprob,
                        compression_ratio=window.compression_ratio,
                        no_speech_prob=window.no_speech_prob,
                    )
                )
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        return Transcript(
            text,
            language,
            job.duration,
            path,
            tuple(ids),
            segments if job.options.timestamps else None,
            words if job.words else None,
            logprobs if job.logprobs else None,
        )

    def _record(self, path, transcripts, elapsed, passes_before, drafts_before: tuple[int, int]) -> None:
        metrics.record_transcriptions(
            path,
            requests=len(transcripts),
            main_passes=self.main_passes - passes_before,
            tokens=sum(len(t.tokens) for t in transcripts),
            audio_seconds=sum(t.duration for t in transcripts),
            elapsed=elapsed,
        )
        drafted, accepted = self.draft_counts()
        metrics.record_drafts(drafted - drafts_before[0], accepted - drafts_before[1])


class _PartialTexts:
    """A window callback that sends each streaming request of a batch the text its transcript gained."""

    def __init__(self, runner: ASRRunner, jobs: list[ASRJob], on_partial: Callable[[int, Partial], None]):
        self.runner, self.jobs, self.on_partial = runner, jobs, on_partial
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent = [""] * len(jobs)

    def __call__(self, row: int, window: Window) -> None:
        job = self.jobs[row]
        if not job.stream:
            return
        for part in window.segments:
            self.tokens[row].extend(part.tokens)
        # A character split across windows waits for its last byte.
        text = self._text(row).lstrip().rstrip("\ufffd")
        logprobs = None
        if job.logprobs:
            eot = self.runner.processor.tokenizer.eos_token_id
            logprobs = tuple(
                self.runner.token_logprob(token, logprob)
                for part in window.segments
                for token, logprob in zip(part.tokens, part.logprobs or (), strict=False)
                if token < eot
            )
        self._send(row, text, logprobs)

    def finish(self) -> None:
        """Whatever was held back, so that the deltas add up to each transcript's text."""
        for row, job in enumerate(self.jobs):
            text = self._text(row).strip()
            if job.stream and text != self.sent[row] and text.startswith(self.sent[row]):
                self._send(row, text, () if job.logprobs else None)

    def _text(self, row: int) -> str:
        return self.runner.processor.tokenizer.decode(self.tokens[row], skip_special_tokens=True)

    def _send(self, row: int, text: str, logprobs) -> None:
        delta, self.sent[row] = text[len(self.sent[row]) :], text
        self.on_partial(row, Partial(delta, logprobs))
