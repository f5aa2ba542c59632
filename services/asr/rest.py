"""OpenAI's audio API at the REST edge: POST /v1/audio/transcriptions and /v1/audio/translations (multipart).

The form is read by the kit's form reader, field by field: every field is either honoured or refused with a 400
that names it, OpenAI's own fields this server does not offer (speaker references, keywords, candidate languages)
included. Its `response_format`, `timestamp_granularities` and `include` say what the transcription computes (the
operation's `timestamps` and `logprobs`) and how the answer is rendered: json, verbose_json, text, srt or vtt. With
`stream=true` the transcript comes as server-sent events, `transcript.text.delta` as each 30 s window is decoded,
then `transcript.text.done`, shaped as the openai SDK's TranscriptionStreamEvent.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import Field

from services.kit.batcher import Done
from services.kit.errors import InvalidArgument
from services.kit.operations import Call, FormSpelling, Upload, form_schema, read_form
from services.kit.streaming import SSE_MEDIA_TYPE, rest_stream, sse_event
from services.kit.validation import parse

from .domain import Partial, Transcript
from .runner import ASRRunner
from .schemas import (
    Task,
    Transcription,
    TranscriptionOptions,
    TranscriptionPlan,
    logprobs_body,
    segments_body,
    words_body,
)

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# OpenAI's transcription fields that this server does not offer, and what to do instead.
NOT_OFFERED = {
    "known_speaker_names": "speaker identification (diarization) is not offered by this server",
    "known_speaker_references": "speaker identification (diarization) is not offered by this server",
    "keywords": "keywords are not offered by this server; put names and terms in `prompt` to steer the spelling",
    "languages": "candidate language lists are not offered by this server; give one `language`, or none to have "
    "it detected",
}
LIST_FIELDS = frozenset({"timestamp_granularities", "include"})
# The form of each route, besides `file` (decoding is this server's extension; so are language and stream on
# translations).
FORMS: dict[Task, FormSpelling] = {
    "transcribe": FormSpelling(
        lists=LIST_FIELDS,
        objects=frozenset({"chunking_strategy"}),
        fields=(
            "model",
            "language",
            "prompt",
            "response_format",
            "temperature",
            "timestamp_granularities",
            "include",
            "stream",
            "decoding",
            "chunking_strategy",
        ),
        refused=NOT_OFFERED,
    ),
    "translate": FormSpelling(
        lists=LIST_FIELDS,
        fields=("model", "language", "prompt", "response_format", "temperature", "stream", "decoding"),
    ),
}
RESPONSES = {
    "200": {
        "description": "json / verbose_json, text / srt / vtt, or server-sent events with stream=true",
        "content": {"application/json": {}, "text/plain": {}, "text/vtt": {}, "text/event-stream": {}},
    }
}


class OpenAIForm(TranscriptionOptions):
    """The form of POST /v1/audio/transcriptions and /translations: the audio file and OpenAI's fields."""

    file: Upload = Field(description="WAV, FLAC, OGG or MP3")
    response_format: ResponseFormat = "json"
    timestamp_granularities: list[Literal["word", "segment"]] | None = Field(
        None, max_length=2, description="verbose_json only: segment (the default), word, or both"
    )
    include: list[Literal["logprobs"]] | None = Field(
        None, max_length=1, description="logprobs: the log-probability of every token (json and streams)"
    )

    @property
    def granularities(self) -> set[str]:
        return set(self.timestamp_granularities or ("segment",))


@dataclass(frozen=True)
class Rendering:
    """How the answer to one form is rendered: its response format, and whether verbose_json lists segments."""

    response_format: ResponseFormat
    segments: bool


def rest_openapi(task: Task) -> dict:
    """The route's multipart body and its answers as OpenAPI describes them."""
    return {**form_schema(OpenAIForm, FORMS[task]), "responses": RESPONSES}


async def read_transcription(request: Request, task: Task) -> Transcription:
    """The form as the operation's request (anything this route does not take, or a field that the chosen
    response format has no room for, refused with a 400 naming it); how to render the answer goes on the
    request's state."""
    fields = await read_form(request, OpenAIForm, FORMS[task])
    if "file" not in fields:
        raise InvalidArgument("file: upload the audio as a file field named file", field="file")
    form = parse(OpenAIForm, fields)
    check_openai_combinations(form)
    request.state.rendering = Rendering(form.response_format, "segment" in form.granularities)
    timestamped = form.response_format in ("verbose_json", "srt", "vtt")
    return Transcription(
        **form.model_dump(include=set(TranscriptionOptions.model_fields)),
        task=task,
        timestamps="word"
        if timestamped and "word" in form.granularities
        else "segment"
        if timestamped
        else "none",
        logprobs=form.include is not None and "logprobs" in form.include,
        file=form.file,
    )


def check_openai_combinations(form: OpenAIForm) -> None:
    """OpenAI's rules on which fields go with which response format: a field that the chosen format has no room
    for is refused, never dropped."""
    if form.timestamp_granularities and form.response_format != "verbose_json":
        raise InvalidArgument(
            f"timestamp_granularities: needs response_format 'verbose_json' (the only format with room for "
            f"them), not {form.response_format!r}",
            field="timestamp_granularities",
        )
    if form.include and form.response_format != "json":
        raise InvalidArgument(
            f"include: logprobs needs response_format 'json', not {form.response_format!r}",
            field="include",
        )
    if form.stream and form.response_format not in ("json", "text"):
        raise InvalidArgument(
            f"stream: streamed transcripts are text events; use response_format 'json' or 'text', not "
            f"{form.response_format!r}",
            field="stream",
        )


async def rest_answer(call: Call[TranscriptionPlan], runner: ASRRunner) -> Response:
    if call.plan.request.stream:
        return await rest_stream(render_events(call), SSE_MEDIA_TYPE, STREAM_HEADERS)
    return render(await call.result(), call.plan, call.origin.state.rendering, runner)


def render(
    transcript: Transcript, plan: TranscriptionPlan, rendering: Rendering, runner: ASRRunner
) -> Response:
    # Text formats have no room for the path that decoded the request, so every format also says it in headers.
    headers = {"x-asr-decoding": transcript.path, "x-asr-language": transcript.language}
    match rendering.response_format:
        case "json":
            return JSONResponse(json_body(transcript), headers=headers)
        case "verbose_json":
            body = verbose_json_body(transcript, plan.request.task, rendering.segments, runner)
            return JSONResponse(body, headers=headers)
        case "text":
            return PlainTextResponse(transcript.text, headers=headers)
        case "srt":
            return PlainTextResponse(srt(transcript), headers=headers)
        case "vtt":
            return PlainTextResponse(vtt(transcript), media_type="text/vtt", headers=headers)


async def render_events(call: Call[TranscriptionPlan]) -> AsyncIterator[bytes]:
    async for event in call.events():
        if isinstance(event, Partial):
            delta = {"type": "transcript.text.delta", "delta": event.delta}
            if event.logprobs is not None:
                delta["logprobs"] = logprobs_body(event.logprobs)
            yield sse_event(delta, event=delta["type"])
        elif isinstance(event, Done):
            transcript: Transcript = event.result
            done = {"type": "transcript.text.done", "text": transcript.text, "decoding": transcript.path}
            if transcript.logprobs is not None:
                done["logprobs"] = logprobs_body(transcript.logprobs)
            yield sse_event(done, event=done["type"])


# -- response formats ---------------------------------------------------------------------------------------------


def usage(transcript: Transcript) -> dict:
    """OpenAI's usage for models billed by audio duration."""
    return {"type": "duration", "seconds": round(transcript.duration, 3)}


def json_body(transcript: Transcript) -> dict:
    body = {"text": transcript.text, "usage": usage(transcript), "decoding": transcript.path}
    if transcript.logprobs is not None:
        body["logprobs"] = logprobs_body(transcript.logprobs)
    return body


def verbose_json_body(transcript: Transcript, task: Task, segments: bool, runner: ASRRunner) -> dict:
    # A translation's text is English whatever was spoken (the spoken language is in the x-asr-language header).
    language = "english" if task == "translate" else runner.language_name(transcript.language)
    body = {
        "task": task,
        "language": language,
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
    }
    if segments:
        body["segments"] = segments_body(transcript)
    if transcript.words is not None:
        body["words"] = words_body(transcript)
    body["usage"] = usage(transcript)
    body["decoding"] = transcript.path
    return body


def clock(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def one_line(text: str) -> str:
    # A blank line ends a cue in both formats.
    return " ".join(text.split())


def srt(transcript: Transcript) -> str:
    blocks = [
        f"{i}\n{clock(s.start, ',')} --> {clock(s.end, ',')}\n{one_line(s.text)}\n"
        for i, s in enumerate(transcript.segments or [], start=1)
    ]
    return "\n".join(blocks)


def vtt(transcript: Transcript) -> str:
    blocks = [
        f"{clock(s.start, '.')} --> {clock(s.end, '.')}\n{one_line(s.text)}\n"
        for s in transcript.segments or []
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)
