"""REST answers, OpenAI's audio API: POST /v1/audio/transcriptions and /v1/audio/translations (multipart).

The form is read as sent, field by field: every field is either honoured or refused with a 400 that names it,
OpenAI's own fields this server does not offer (speaker references, keywords, voice-activity chunking) included.
With `stream=true` the transcript comes as server-sent events, `transcript.text.delta` as each 30 s window is
decoded, then `transcript.text.done`, shaped as the openai SDK's TranscriptionStreamEvent.
"""

from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile

from services.kit.batcher import Done
from services.kit.errors import InvalidArgument
from services.kit.operations import Call, Operation, Upload
from services.kit.streaming import SSE_MEDIA_TYPE, rest_stream, sse_event
from services.kit.validation import parse

from .runner import ASRRunner, Partial, Transcript
from .schemas import (
    Transcription,
    TranscriptionPlan,
    TranscriptionRequest,
    check_openai_combinations,
    json_body,
    logprobs_body,
    srt,
    verbose_json_body,
    vtt,
)

Task = Literal["transcribe", "translate"]
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# The form fields each route takes, besides `file` (decoding is this server's extension; so are language and
# stream on translations).
FIELDS: dict[Task, tuple[str, ...]] = {
    "transcribe": (
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
    "translate": ("model", "language", "prompt", "response_format", "temperature", "stream", "decoding"),
}
LIST_FIELDS = ("timestamp_granularities", "include")
# OpenAI's transcription fields that this server does not offer, and what to do instead.
NOT_OFFERED = {
    "known_speaker_names": "speaker identification (diarization) is not offered by this server",
    "known_speaker_references": "speaker identification (diarization) is not offered by this server",
    "keywords": "keywords are not offered by this server; put names and terms in `prompt` to steer the spelling",
    "languages": "candidate language lists are not offered by this server; give one `language`, or none to have "
    "it detected",
}
MAX_FORM_FIELDS = 64


def form_schema(task: Task) -> dict:
    """The multipart body as OpenAPI describes it (the route reads the raw form, so FastAPI cannot derive it)."""
    fields = TranscriptionRequest.model_json_schema()["properties"]
    properties = {"file": {"type": "string", "format": "binary", "description": "WAV, FLAC, OGG or MP3"}}
    for name in FIELDS[task]:
        properties[f"{name}[]" if name in LIST_FIELDS else name] = fields[name]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties, "required": ["file"]},
                    "encoding": {
                        f"{name}[]": {"explode": True} for name in LIST_FIELDS if name in FIELDS[task]
                    },
                }
            },
        },
        "responses": {
            "200": {
                "description": "json / verbose_json, text / srt / vtt, or server-sent events with stream=true",
                "content": {
                    "application/json": {},
                    "text/plain": {},
                    "text/vtt": {},
                    "text/event-stream": {},
                },
            }
        },
    }


async def read_form(request: Request, task: Task) -> Transcription:
    """The text fields (list fields as lists) and the uploaded file as the request; anything this route does not
    take, or a field that the chosen response format has no room for, is refused with a 400 naming it."""
    allowed = FIELDS[task]
    route = request.url.path
    fields: dict[str, object] = {}
    data, filename = None, None
    async with request.form(max_files=2, max_fields=MAX_FORM_FIELDS) as form:
        for key, value in form.multi_items():
            name = key.split("[", 1)[0]  # the SDK sends include[]=..., chunking_strategy[type]=...
            if isinstance(value, UploadFile):
                if name != "file":
                    raise InvalidArgument(f"{key}: unexpected file; upload the audio as `file`", field=key)
                if data is not None:
                    raise InvalidArgument("file: send exactly one audio file", field="file")
                data, filename = await value.read(), value.filename
            elif name == "file":
                raise InvalidArgument(
                    "file: upload the audio as a file (multipart/form-data), not as text", field="file"
                )
            elif name in NOT_OFFERED and task == "transcribe":
                raise InvalidArgument(f"{key}: {NOT_OFFERED[name]}", field=key)
            elif name not in allowed:
                raise InvalidArgument(
                    f"{key}: not a field of {route}; it takes file, {', '.join(allowed)}", field=key
                )
            elif name == "chunking_strategy" and key != name:
                # The SDK sends the server_vad object as chunking_strategy[type]=server_vad&chunking_strategy[...]=...
                member = key[len(name) :]
                if not (member.startswith("[") and member.endswith("]") and "[" not in member[1:]):
                    raise InvalidArgument(f"{key}: send chunking_strategy[field]=value", field=key)
                strategy = fields.setdefault(name, {})
                if not isinstance(strategy, dict) or member[1:-1] in strategy:
                    raise InvalidArgument(f"{key}: given more than once", field=key)
                strategy[member[1:-1]] = value
            elif name in LIST_FIELDS:
                if key not in (name, f"{name}[]"):
                    raise InvalidArgument(
                        f"{key}: send the list as {name}[]=value, once per value", field=key
                    )
                fields.setdefault(name, []).append(value)
            elif key != name:
                raise InvalidArgument(f"{key}: {name} takes one value, not a list or object", field=key)
            elif name in fields:
                raise InvalidArgument(f"{name}: given more than once", field=name)
            else:
                fields[name] = value
    if data is None:
        raise InvalidArgument("file: upload the audio as a file field named file", field="file")
    request = parse(Transcription, {**fields, "task": task, "file": Upload(data=data, filename=filename)})
    check_openai_combinations(request)
    return request


def render(transcript: Transcript, plan: TranscriptionPlan, runner: ASRRunner) -> Response:
    # Text formats have no room for the path that decoded the request, so every format also says it in headers.
    headers = {"x-asr-decoding": transcript.path, "x-asr-language": transcript.language}
    request = plan.request
    match request.response_format:
        case "json":
            return JSONResponse(json_body(transcript), headers=headers)
        case "verbose_json":
            return JSONResponse(verbose_json_body(transcript, request.task, request, runner), headers=headers)
        case "text":
            return PlainTextResponse(transcript.text, headers=headers)
        case "srt":
            return PlainTextResponse(srt(transcript), headers=headers)
        case "vtt":
            return PlainTextResponse(vtt(transcript), media_type="text/vtt", headers=headers)


async def answer(call: Call[TranscriptionPlan], runner: ASRRunner) -> Response:
    if call.job.request.stream:
        return await rest_stream(stream_events(call), SSE_MEDIA_TYPE, STREAM_HEADERS)
    return render(await call.result(), call.job, runner)


async def stream_events(call: Call[TranscriptionPlan]) -> AsyncIterator[bytes]:
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


def create_router(transcription: Operation, runner: ASRRunner) -> APIRouter:
    router = APIRouter(tags=["asr"])
    routes = {
        "transcribe": (
            "/v1/audio/transcriptions",
            "transcriptions",
            "multipart/form-data: `file` and OpenAI's transcription fields. `model` may be the served model's id, "
            "whisper-1, gpt-4o-transcribe or gpt-4o-mini-transcribe.",
        ),
        "translate": (
            "/v1/audio/translations",
            "translations",
            "multipart/form-data: `file` and OpenAI's translation fields (English text from any spoken language).",
        ),
    }
    for task, (path, name, description) in routes.items():
        transcription.add_route(
            router,
            path,
            answer=lambda call: answer(call, runner),
            read=lambda request, task=task: read_form(request, task),
            name=name,
            description=description,
            openapi_extra=form_schema(task),
        )
    return router
