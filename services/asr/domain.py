"""The ASR domain: a transcription job as the runner takes it (audio, decoding options, what the answer needs) and
the transcript it gives back, with its segments, words, token log-probabilities and streaming `Partial` events.
No model, no web code: every other module of the service builds on these."""

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

SAMPLE_RATE = 16000
DecodingPath = Literal["assisted", "plain"]


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
        return (
            self.options,
            self.long_form,
            None if self.decoding == "auto" else self.decoding,
            self.chunking,
        )


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
