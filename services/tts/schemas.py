"""Request schemas shared by REST, gRPC and the Open Inference Protocol, and the checks that turn a request into
a plan: the runner's job, what the batcher reads of it (the kit's `Plan`) and what the answer needs."""

import json
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.kit.audio import decode_audio, supported_output_formats
from services.kit.errors import InvalidArgument
from services.kit.json_limits import json_shape_error
from services.kit.operations import Upload

from .encoding import STREAM_FORMATS
from .runner import SpeechRunner, model_name
from .settings import TTSSettings
from .synthesis import ConversionJob, SpeechJob
from .voices import check_embedding


class VoiceRef(BaseModel):
    """OpenAI's object form of a voice: {"id": "alloy"}."""

    id: str


class SpeechRequest(BaseModel):
    """OpenAI's POST /v1/audio/speech body plus extensions: seed, speaker_embedding, stream."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="the served model's name or an OpenAI alias such as tts-1")
    input: str = Field(description="text to speak")
    voice: str | VoiceRef | None = Field(
        None,
        description="a voice or voice alias (GET /v1/voices; every OpenAI voice name is one); default if unset",
    )
    instructions: str | None = Field(
        None,
        description="OpenAI's voice instructions: accepted but not applied (SpeechT5 takes none); a response "
        "that ignored them says so in its x-modelserve-ignored header",
    )
    response_format: str | None = Field(
        None,
        description="mp3 (default), opus, aac (ADTS), flac, wav (at the model's 16 kHz), or pcm: raw 24 kHz 16-bit "
        "signed little-endian mono like OpenAI's",
    )
    speed: float = Field(1.0, ge=0.25, le=4.0, description="tempo; pitch is kept")
    stream_format: Literal["audio", "sse"] | None = Field(
        None,
        description="audio (default): the audio bytes; sse: server-sent events speech.audio.delta (base64 audio) "
        "then speech.audio.done (usage)",
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="same seed, same request: same audio bytes"
    )
    speaker_embedding: list[float] | None = Field(
        None, description="a speaker x-vector used instead of voice"
    )
    stream: bool | None = Field(
        None,
        description="send audio sentence by sentence as it is made (wav or pcm only). Default: streamed for wav "
        "and pcm, as OpenAI streams them; false: the whole file at once, with its duration in a header",
    )


@dataclass(frozen=True)
class SpeechPlan:
    """A speech request prepared: the runner's job and its cost, and what the transports need to answer it."""

    job: SpeechJob
    cost: float  # characters to speak
    fmt: str
    voice: str | None  # the installed voice that speaks; None when the request sent its own embedding
    events: bool  # server-sent events (stream_format sse) rather than raw audio bytes
    ignored: tuple[str, ...]  # accepted parameters that do not change the audio
    input_tokens: int  # what the model reads: the sentences' token ids

    @property
    def key(self) -> Hashable:
        return self.job.batch_key

    @property
    def nbytes(self) -> int:
        return 0  # a few sentences of text: nothing worth counting against the bytes held queued


# An x-vector's numbers (512 for SpeechT5) with room to spare; the exact size is checked once parsed.
EMBEDDING_JSON_ELEMENTS = 8192


class ConversionRequest(BaseModel):
    """POST /v1/audio/conversions (a multipart form), gRPC Convert and OIP "tts-conversion" alike."""

    model_config = ConfigDict(extra="forbid")

    file: Upload = Field(description="speech to convert: wav, flac, ogg or mp3")
    voice: str | None = None
    speaker_embedding: list[float] | None = Field(
        None, description="JSON array of 512 numbers, instead of voice"
    )
    response_format: str = "wav"
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    @field_validator("speaker_embedding", mode="before")
    @classmethod
    def _json_array(cls, value):
        # A multipart form carries the embedding as a JSON array in a text field, bounded before parsing
        # (the form allows a megabyte: deep nesting would hit the recursion limit).
        if isinstance(value, str):
            if problem := json_shape_error(value.encode(), max_depth=1, max_elements=EMBEDDING_JSON_ELEMENTS):
                raise ValueError(f"must be a JSON array of numbers ({problem})")
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("must be a JSON array of numbers") from None
        return value


def accepted_models(settings: TTSSettings) -> list[str]:
    return [model_name(settings.model), *settings.model_aliases]


def output_format(requested: str | None, default: str) -> str:
    supported = supported_output_formats()
    fmt = (requested or default).lower()
    if fmt not in supported:
        raise InvalidArgument(
            f"response_format: unsupported format {fmt!r}; supported: {', '.join(supported)}",
            field="response_format",
        )
    return fmt


def plan_speech(request: SpeechRequest, runner: SpeechRunner, settings: TTSSettings) -> SpeechPlan:
    """The job for the runner and how to answer it; every refusal names the field."""
    if request.model and request.model not in accepted_models(settings):
        raise InvalidArgument(
            f"model: unknown model {request.model!r}; available: {', '.join(accepted_models(settings))}",
            field="model",
        )
    if len(request.input) > settings.max_input_chars:
        raise InvalidArgument(
            f"input: {len(request.input)} characters exceeds the limit of {settings.max_input_chars}",
            field="input",
        )
    if not request.input.strip():
        raise InvalidArgument("input: must not be empty", field="input")
    instructions = request.instructions or ""
    if len(instructions) > settings.max_instructions_chars:
        raise InvalidArgument(
            f"instructions: {len(instructions)} characters exceeds the limit of {settings.max_instructions_chars}",
            field="instructions",
        )
    sentences = runner.sentences(request.input)
    if not sentences:
        raise InvalidArgument(
            "input: nothing to pronounce (no letter or digit the model knows)", field="input"
        )
    fmt = output_format(
        request.response_format, "wav" if request.stream else settings.default_response_format
    )
    if request.stream and fmt not in STREAM_FORMATS:
        raise InvalidArgument(
            f"response_format: streaming sends {' or '.join(STREAM_FORMATS)}, not {fmt!r}",
            field="response_format",
        )
    stream = fmt in STREAM_FORMATS if request.stream is None else request.stream
    ignored = ["instructions"] if instructions.strip() else []
    voice = request.voice.id if isinstance(request.voice, VoiceRef) else request.voice
    if request.speaker_embedding is not None:
        speaker, voice_name = speaker_for(runner, voice, request.speaker_embedding), None
        if voice:  # the request's own embedding speaks instead
            ignored.append("voice")
    else:
        voice_name = runner.voices.resolve(voice)
        speaker = runner.voices.voices[voice_name]
    job = SpeechJob(tuple(sentences), speaker, speed=request.speed, seed=request.seed, stream=stream)
    return SpeechPlan(
        job,
        runner.cost(job),
        fmt,
        voice_name,
        events=request.stream_format == "sse",
        ignored=tuple(ignored),
        input_tokens=sum(len(sentence.token_ids) for sentence in sentences),
    )


@dataclass(frozen=True)
class ConversionPlan:
    """A conversion request prepared: the runner's job (the decoded upload) and its cost in seconds of speech."""

    job: ConversionJob
    cost: float
    fmt: str

    @property
    def key(self) -> Hashable:
        return self.job.batch_key

    @property
    def nbytes(self) -> int:
        return self.job.samples.nbytes


def plan_conversion(
    request: ConversionRequest, runner: SpeechRunner, settings: TTSSettings
) -> ConversionPlan:
    """Decodes the upload (blocking: call it off the event loop)."""
    fmt = output_format(request.response_format, "wav")
    speaker = speaker_for(runner, request.voice, request.speaker_embedding)
    samples = decode_audio(
        request.file.data,
        sample_rate=runner.vc_features.sampling_rate,
        max_seconds=settings.max_conversion_seconds,
        filename=request.file.filename,
        min_rate=settings.min_sample_rate,
        max_rate=settings.max_sample_rate,
        max_channels=settings.max_channels,
    )
    shortest = shortest_convertible(runner.vc.config)
    if samples.size < shortest:
        rate = runner.vc_features.sampling_rate
        raise InvalidArgument(
            f"audio is too short to convert: {samples.size} samples at {rate} Hz; at least {shortest} "
            f"({1000 * shortest / rate:g} ms) are needed",
            field="file",
        )
    job = ConversionJob(samples, speaker, seed=request.seed)
    return ConversionPlan(job, runner.cost(job), fmt)


def shortest_convertible(config) -> int:
    """Fewest input samples from which the speech encoder's convolutions make one frame."""
    samples = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride, strict=True))):
        samples = (samples - 1) * stride + kernel
    return samples


def speaker_for(runner: SpeechRunner, voice: str | None, embedding: list[float] | None):
    """A request's own embedding wins over the named voice."""
    if embedding is not None:
        return check_embedding(embedding, runner.tts.config.speaker_embedding_dim, "speaker_embedding")
    return runner.voices.get(voice)
