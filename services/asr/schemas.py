"""Request options shared by REST and gRPC, their checks against the service limits, and the response formats
of OpenAI's audio API (json, text, verbose_json, srt, vtt, and the transcript.text.* stream events)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.kit.errors import InvalidArgument, NotFound
from services.kit.validation import parse

from . import vad
from .chunking import chunking_options
from .runner import ASRJob, ASRRunner, DecodeOptions, TokenLogprob, Transcript
from .settings import ASRSettings

# Names OpenAI clients send; each means "the speech model this server runs".
OPENAI_MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
TIMESTAMPED_FORMATS = ("verbose_json", "srt", "vtt")


class TranscriptionRequest(BaseModel):
    """The form fields of POST /v1/audio/transcriptions and /translations, less the file."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description=f"the served model's id, or one of {', '.join(OPENAI_MODEL_ALIASES)}"
    )
    language: str | None = Field(
        None, max_length=32, description="ISO 639-1 code or name; detected when unset"
    )
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    decoding: Literal["auto", "assisted", "plain"] = Field(
        "auto", description="extension: force the speculative (assisted) or the plain batched path"
    )
    timestamp_granularities: list[Literal["word", "segment"]] | None = Field(
        None, max_length=2, description="verbose_json only: segment (the default), word, or both"
    )
    include: list[Literal["logprobs"]] | None = Field(
        None, max_length=1, description="logprobs: the log-probability of every token (json and streams)"
    )
    stream: bool = Field(False, description="server-sent transcript.text.delta events, then transcript.text.done")
    chunking_strategy: str | dict[str, str | float | int] | None = Field(
        None,
        description='"auto" or {"type": "server_vad", "threshold", "prefix_padding_ms", "silence_duration_ms"}: '
        "Silero VAD cuts the audio at silences into <= 30 s chunks of speech, decoded as one batch; "
        "non-speech is dropped. Unset: Whisper's sequential 30 s windows",
    )

    @property
    def granularities(self) -> set[str]:
        return set(self.timestamp_granularities or ("segment",))

    @property
    def wants_logprobs(self) -> bool:
        return "logprobs" in (self.include or ())


def options_request(
    task: str,
    *,
    timestamps: bool = False,
    word_timestamps: bool = False,
    logprobs: bool = False,
    **fields,
) -> tuple[str, TranscriptionRequest]:
    """The task and the request model for the flag-style options of gRPC and the OIP (timestamps, word
    timestamps, logprobs) in place of REST's response_format, timestamp_granularities and include."""
    if task not in ("transcribe", "translate"):
        raise InvalidArgument(f"task: must be 'transcribe' or 'translate', got {task!r}", field="task")
    request = {
        **fields,
        "response_format": "verbose_json" if timestamps or word_timestamps else "json",
        "timestamp_granularities": ["segment", "word"] if word_timestamps else None,
        "include": ["logprobs"] if logprobs else None,
    }
    return task, parse(TranscriptionRequest, request)


def check_model(model: str | None, runner: ASRRunner) -> None:
    if model and model not in (runner.model_id, *OPENAI_MODEL_ALIASES):
        raise NotFound(
            f"model {model!r} is not served here; use {runner.model_id!r} or one of its OpenAI names "
            f"({', '.join(OPENAI_MODEL_ALIASES)})",
            field="model",
        )


def check_request(
    request: TranscriptionRequest,
    task: Literal["transcribe", "translate"],
    runner: ASRRunner,
    settings: ASRSettings,
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
    if task == "translate" and not runner.multilingual:
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
        task=task,
        prompt=request.prompt or None,
        timestamps=request.response_format in TIMESTAMPED_FORMATS,
        temperature=request.temperature,
    )
    return options, runner.language_code(request.language)


def check_openai_combinations(request: TranscriptionRequest) -> None:
    """The REST rules of OpenAI's API on which fields go with which response format: a field that the chosen
    format has no room for is refused, never dropped."""
    if request.timestamp_granularities and request.response_format != "verbose_json":
        raise InvalidArgument(
            f"timestamp_granularities: needs response_format 'verbose_json' (the only format with room for "
            f"them), not {request.response_format!r}",
            field="timestamp_granularities",
        )
    if request.wants_logprobs and request.response_format != "json":
        raise InvalidArgument(
            f"include: logprobs needs response_format 'json', not {request.response_format!r}",
            field="include",
        )
    if request.stream and request.response_format not in ("json", "text"):
        raise InvalidArgument(
            f"stream: streamed transcripts are text events; use response_format 'json' or 'text', not "
            f"{request.response_format!r}",
            field="stream",
        )


def build_job(request: TranscriptionRequest, options: DecodeOptions, language: str | None, audio) -> ASRJob:
    return ASRJob(
        audio,
        options,
        language,
        request.decoding,
        window_stats=request.response_format == "verbose_json",
        words=options.timestamps and "word" in request.granularities,
        logprobs=request.wants_logprobs,
        stream=request.stream,
        chunking=chunking_options(request.chunking_strategy),
    )


# -- responses --------------------------------------------------------------------------------------------------


def usage(transcript: Transcript) -> dict:
    """OpenAI's usage for models billed by audio duration."""
    return {"type": "duration", "seconds": round(transcript.duration, 3)}


def logprobs_body(logprobs: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> list[dict]:
    return [{"token": t.token, "bytes": list(t.bytes), "logprob": t.logprob} for t in logprobs]


def json_body(transcript: Transcript) -> dict:
    body = {"text": transcript.text, "usage": usage(transcript), "decoding": transcript.path}
    if transcript.logprobs is not None:
        body["logprobs"] = logprobs_body(transcript.logprobs)
    return body


def verbose_json_body(
    transcript: Transcript, task: str, request: TranscriptionRequest, runner: ASRRunner
) -> dict:
    # A translation's text is English whatever was spoken (the spoken language is in the x-asr-language header).
    language = "english" if task == "translate" else runner.language_name(transcript.language)
    body = {
        "task": task,
        "language": language,
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
    }
    if "segment" in request.granularities:
        body["segments"] = [
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
    if transcript.words is not None:
        body["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in transcript.words]
    body["usage"] = usage(transcript)
    body["decoding"] = transcript.path
    return body


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
