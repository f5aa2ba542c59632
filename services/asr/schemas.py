"""Request options shared by REST and gRPC, their checks against the service limits, and the response formats
of OpenAI's audio API (json, text, verbose_json, srt, vtt)."""

import zlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.kit.errors import InvalidArgument, NotFound

from .runner import AsrJob, AsrRunner, DecodeOptions, Transcript
from .settings import AsrSettings

# OpenAI clients send this name; it means "the speech model this server runs".
OPENAI_MODEL_ALIAS = "whisper-1"

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
TIMESTAMPED_FORMATS = ("verbose_json", "srt", "vtt")


class TranscriptionRequest(BaseModel):
    """The form fields of POST /v1/audio/transcriptions and /translations, less the file."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description=f"the served model's id, or {OPENAI_MODEL_ALIAS!r}")
    language: str | None = Field(
        None, max_length=32, description="ISO 639-1 code or name; detected when unset"
    )
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    decoding: Literal["auto", "assisted", "plain"] = Field(
        "auto", description="extension: force the speculative (assisted) or the plain batched path"
    )
    timestamp_granularities: list[Literal["segment"]] | None = Field(
        None, description="only segment timestamps are available"
    )


def check_request(
    request: TranscriptionRequest,
    task: Literal["transcribe", "translate"],
    runner: AsrRunner,
    settings: AsrSettings,
) -> tuple[DecodeOptions, str | None]:
    """Decoding options and language code, checked against the service and its limits (before any audio is
    decoded); every refusal names the field."""
    if request.model and request.model not in (runner.model_id, OPENAI_MODEL_ALIAS):
        raise NotFound(
            f"model {request.model!r} is not served here; use {runner.model_id!r} (or {OPENAI_MODEL_ALIAS!r})",
            field="model",
        )
    if request.prompt and len(request.prompt) > settings.max_prompt_chars:
        raise InvalidArgument(
            f"prompt: {len(request.prompt)} characters exceeds the limit of {settings.max_prompt_chars}",
            field="prompt",
        )
    if request.prompt and (tokens := runner.prompt_tokens(request.prompt)) > runner.max_prompt_tokens:
        raise InvalidArgument(
            f"prompt: {tokens} tokens exceeds the limit of {runner.max_prompt_tokens}", field="prompt"
        )
    if task == "translate" and not runner.multilingual:
        raise InvalidArgument(
            f"task: model {runner.model_id} is English-only and cannot translate", field="task"
        )
    if request.decoding == "assisted" and not runner.has_assistant:
        raise InvalidArgument(
            "decoding: 'assisted' needs an assistant model and none is configured", field="decoding"
        )
    options = DecodeOptions(
        task=task,
        prompt=request.prompt or None,
        timestamps=request.response_format in TIMESTAMPED_FORMATS or bool(request.timestamp_granularities),
        temperature=request.temperature,
    )
    return options, runner.language_code(request.language)


def build_job(request: TranscriptionRequest, options: DecodeOptions, language: str | None, audio) -> AsrJob:
    return AsrJob(audio, options, language, request.decoding)


# -- responses --------------------------------------------------------------------------------------------------


def compression_ratio(text: str) -> float:
    """Whisper's repetition check: highly repetitive text compresses well."""
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 3) if data else 0.0


def json_body(transcript: Transcript) -> dict:
    return {"text": transcript.text, "decoding": transcript.path}


def verbose_json_body(transcript: Transcript, task: str, temperature: float, runner: AsrRunner) -> dict:
    return {
        "task": task,
        "language": runner.language_name(transcript.language),
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": [
            {
                "id": i,
                "start": segment.start,
                "end": segment.end,
                "text": segment.text,
                "tokens": list(segment.tokens),
                "temperature": temperature,
                "compression_ratio": compression_ratio(segment.text),
            }
            for i, segment in enumerate(transcript.segments or [])
        ],
        "decoding": transcript.path,
    }


def _clock(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _one_line(text: str) -> str:
    # A blank line ends a cue in both formats.
    return " ".join(text.split())


def srt(transcript: Transcript) -> str:
    blocks = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{_one_line(s.text)}\n"
        for i, s in enumerate(transcript.segments or [], start=1)
    ]
    return "\n".join(blocks)


def vtt(transcript: Transcript) -> str:
    blocks = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{_one_line(s.text)}\n"
        for s in transcript.segments or []
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)
