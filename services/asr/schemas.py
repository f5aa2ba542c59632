"""The transcription operation's request, transport-neutral: what to compute (task, language, prompt, decoding,
timestamps, log-probabilities, streaming, chunking) and the audio, as REST (OpenAI's form, mapped in `rest.py`),
gRPC and the OIP fill it; its checks against the service limits; the plan the kit queues; and the response shapes
every transport shares (segments, words, token log-probabilities)."""

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.kit.audio import check_sample_rate, decode_audio, decode_pcm16, resample
from services.kit.decoding import run_decoding
from services.kit.errors import InvalidArgument, NotFound, PayloadTooLarge
from services.kit.operations import Upload

from . import vad
from .chunking import chunking_options
from .domain import SAMPLE_RATE, ASRJob, DecodeOptions, TokenLogprob, Transcript
from .runner import ASRRunner
from .settings import ASRSettings

# OpenAI's transcription model names (the openai SDK's AudioModel), each meaning "the speech model this server
# runs", as are their dated snapshots (gpt-4o-mini-transcribe-2025-12-15).
OPENAI_MODEL_ALIASES = ("whisper-1", "gpt-transcribe", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
# OpenAI's models that label speakers: refused with a 400 naming diarization (as known_speaker_names is).
OPENAI_DIARIZING_MODELS = ("gpt-4o-transcribe-diarize",)
DATED_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")

Task = Literal["transcribe", "translate"]
# none: text only; segment: timed segments with Whisper's per-window statistics; word: segments and word timings.
Timestamps = Literal["none", "segment", "word"]


class TranscriptionOptions(BaseModel):
    """The options every transport shares, as OpenAI's form spells them (REST's form adds its own on top)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description=f"the served model's id, or one of {', '.join(OPENAI_MODEL_ALIASES)} (or a dated snapshot "
        "of one, such as gpt-4o-mini-transcribe-2025-12-15)",
    )
    language: str | None = Field(
        None, max_length=32, description="ISO 639-1 code or name; detected when unset"
    )
    prompt: str | None = None
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    decoding: Literal["auto", "assisted", "plain"] = Field(
        "auto", description="extension: force the speculative (assisted) or the plain batched path"
    )
    stream: bool = Field(
        False, description="server-sent transcript.text.delta events, then transcript.text.done"
    )
    chunking_strategy: str | dict[str, str | float | int] | None = Field(
        None,
        description='"auto" or {"type": "server_vad", "threshold", "prefix_padding_ms", "silence_duration_ms"}: '
        "Silero VAD cuts the audio at silences into <= 30 s chunks of speech, decoded as one batch; "
        "non-speech is dropped. Unset: Whisper's sequential 30 s windows",
    )


class Samples(BaseModel):
    """Audio sent as samples rather than a file, at `rate` Hz: mono float32 (the OIP's "audio_samples") or 16-bit
    little-endian PCM bytes (a gRPC stream's)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    data: np.ndarray | bytes
    rate: int | None = None


class Transcription(TranscriptionOptions):
    """What every transport asks of the operation: the task, what the transcript holds, and the audio (a file or
    samples)."""

    task: Task = "transcribe"
    timestamps: Timestamps = "none"
    logprobs: bool = False  # the log-probability of every token
    file: Upload | None = None
    samples: Samples | None = None


@dataclass(frozen=True)
class TranscriptionPlan:
    """A checked request (its audio dropped once decoded), the runner's job for it and the job's cost."""

    request: Transcription
    job: ASRJob
    cost: float

    @property
    def key(self) -> tuple:
        return self.job.batch_key

    @property
    def nbytes(self) -> int:
        return self.job.nbytes


def checked_task(task: str) -> Task:
    """gRPC's and the OIP's task text, refused by name when it is neither task."""
    if task not in ("transcribe", "translate"):
        raise InvalidArgument(f"task: must be 'transcribe' or 'translate', got {task!r}", field="task")
    return task


def timestamps_of(segments: bool, words: bool) -> Timestamps:
    """gRPC's and the OIP's two timestamp flags as one choice (word timings come with their segments)."""
    return "word" if words else "segment" if segments else "none"


async def plan_transcription(
    request: Transcription, runner: ASRRunner, settings: ASRSettings
) -> TranscriptionPlan:
    """The request checked (before any audio is decoded), then its audio decoded off the event loop."""
    options, language = check_request(request, runner, settings)
    audio = await run_decoding(decode_input, request, settings)
    request = request.model_copy(update={"file": None, "samples": None})
    job = build_job(request, options, language, audio)
    return TranscriptionPlan(request, job, runner.cost(job))


def decode_input(request: Transcription, settings: ASRSettings) -> np.ndarray:
    """Mono float32 samples at 16 kHz from the request's file or samples, under the service's audio limits."""
    if request.file is not None:
        return decode_audio(
            request.file.data,
            max_seconds=settings.max_audio_seconds,
            filename=request.file.filename,
            min_rate=settings.min_sample_rate,
            max_rate=settings.max_sample_rate,
            max_channels=settings.max_channels,
        )
    if request.samples is None:
        raise InvalidArgument("file: send the audio", field="file")
    if isinstance(request.samples.data, bytes):
        return decode_pcm16(
            request.samples.data,
            request.samples.rate,
            max_seconds=settings.max_audio_seconds,
            min_rate=settings.min_sample_rate,
            max_rate=settings.max_sample_rate,
        )
    return float_samples(request.samples.data, request.samples.rate, settings)


def float_samples(samples: np.ndarray, rate: int | None, settings: ASRSettings) -> np.ndarray:
    if rate is None:
        raise InvalidArgument("parameter 'sample_rate': required with 'audio_samples'", field="sample_rate")
    check_sample_rate(
        rate, settings.min_sample_rate, settings.max_sample_rate, "audio_samples", field="sample_rate"
    )
    if samples.size == 0:
        raise InvalidArgument("input 'audio_samples' is empty", field="audio_samples")
    if samples.size > settings.max_audio_seconds * rate:
        raise PayloadTooLarge(
            f"input 'audio_samples' is {samples.size / rate:.1f} s long at {rate} Hz; the limit is "
            f"{settings.max_audio_seconds:g} s",
            field="audio_samples",
        )
    if not np.isfinite(samples).all():
        raise InvalidArgument("input 'audio_samples' contains NaN or infinite samples", field="audio_samples")
    mono = resample(samples.astype(np.float32, copy=False), rate, SAMPLE_RATE)
    # The resampling filter may ring past full scale, as audio files' samples may exceed it.
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def check_model(model: str | None, runner: ASRRunner) -> None:
    if not model or model == runner.model_id:
        return
    family = DATED_SNAPSHOT.sub("", model)
    if family in OPENAI_MODEL_ALIASES:
        return
    if family in OPENAI_DIARIZING_MODELS:
        raise InvalidArgument(
            f"model: {model!r} labels speakers, and speaker identification (diarization) is not offered by this "
            f"server; use {runner.model_id!r} or one of {', '.join(OPENAI_MODEL_ALIASES)}",
            field="model",
        )
    raise NotFound(
        f"model {model!r} is not served here; use {runner.model_id!r} or one of its OpenAI names "
        f"({', '.join(OPENAI_MODEL_ALIASES)}, or a dated snapshot of one)",
        field="model",
    )


def check_request(
    request: Transcription, runner: ASRRunner, settings: ASRSettings
) -> tuple[DecodeOptions, str | None]:
    """Decoding options and language code, checked against the service and its limits (before any audio is
    decoded); every refusal names the field."""
    check_model(request.model, runner)
    if request.prompt and len(request.prompt) > settings.max_prompt_chars:
        raise InvalidArgument(
            f"prompt: {len(request.prompt)} characters exceeds the limit of {settings.max_prompt_chars}",
            field="prompt",
        )
    if request.prompt and (tokens := runner.prompt_tokens(request.prompt)) > runner.max_prompt_tokens:
        raise InvalidArgument(
            f"prompt: {tokens} tokens exceeds the limit of {runner.max_prompt_tokens}", field="prompt"
        )
    if request.task == "translate" and not runner.multilingual:
        raise InvalidArgument(
            f"task: model {runner.model_id} is English-only and cannot translate", field="task"
        )
    chunking = chunking_options(request.chunking_strategy)
    if chunking is not None and (reason := vad.missing()):
        raise InvalidArgument(
            f"chunking_strategy: voice-activity chunking is not available on this server ({reason}; it comes "
            "with modelserve[asr]); leave it unset",
            field="chunking_strategy",
        )
    if chunking is not None and request.decoding == "assisted":
        raise InvalidArgument(
            "decoding: chunked audio is decoded as one plain batch (assisted decoding takes one sequence at a "
            "time); leave decoding unset or 'plain' with chunking_strategy",
            field="decoding",
        )
    if request.decoding == "assisted" and not runner.has_assistant:
        raise InvalidArgument(
            "decoding: 'assisted' needs an assistant model and none is configured", field="decoding"
        )
    options = DecodeOptions(
        task=request.task,
        prompt=request.prompt or None,
        timestamps=request.timestamps != "none",
        temperature=request.temperature,
    )
    return options, runner.language_code(request.language)


def build_job(request: Transcription, options: DecodeOptions, language: str | None, audio) -> ASRJob:
    return ASRJob(
        audio,
        options,
        language,
        request.decoding,
        window_stats=options.timestamps,
        words=request.timestamps == "word",
        logprobs=request.logprobs,
        stream=request.stream,
        chunking=chunking_options(request.chunking_strategy),
    )


# -- response shapes, as OpenAI's verbose_json and json spell them ---------------------------------------------


def logprobs_body(logprobs: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> list[dict]:
    return [{"token": t.token, "bytes": list(t.bytes), "logprob": t.logprob} for t in logprobs]


def segments_body(transcript: Transcript) -> list[dict]:
    return [
        {
            "id": i,
            "seek": segment.seek,
            "start": segment.start,
            "end": segment.end,
            "text": segment.text,
            "tokens": list(segment.tokens),
            "temperature": segment.temperature,
            "avg_logprob": segment.avg_logprob,
            "compression_ratio": segment.compression_ratio,
            "no_speech_prob": segment.no_speech_prob,
        }
        for i, segment in enumerate(transcript.segments or [])
    ]


def words_body(transcript: Transcript) -> list[dict]:
    return [{"word": w.word, "start": w.start, "end": w.end} for w in transcript.words or []]
