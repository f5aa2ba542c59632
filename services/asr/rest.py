"""REST routes, OpenAI's audio API: POST /v1/audio/transcriptions and /v1/audio/translations (multipart).

The form is read as sent, field by field: every field is either honoured or refused with a 400 that names it,
OpenAI's own fields this server does not offer (speaker references, keywords, voice-activity chunking) included.
With `stream=true` the transcript comes as server-sent events, `transcript.text.delta` as each 30 s window is
decoded, then `transcript.text.done`, shaped as the openai SDK's TranscriptionStreamEvent.
"""

import json
import logging
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from services.kit.audio import decode_audio
from services.kit.batcher import Done, DynamicBatcher
from services.kit.errors import InvalidArgument, ServiceError
from services.kit.validation import parse

from .runner import ASRJob, ASRRunner, Partial, Transcript
from .schemas import (
    TranscriptionRequest,
    build_job,
    check_openai_combinations,
    check_request,
    json_body,
    logprobs_body,
    srt,
    verbose_json_body,
    vtt,
)
from .settings import ASRSettings

log = logging.getLogger(__name__)

Task = Literal["transcribe", "translate"]

# The form fields each route takes, besides `file` (decoding is this server's extension; so are language and
# stream on translations).
FIELDS: dict[Task, tuple[str, ...]] = {
    "transcribe": (
        "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities", "include",
        "stream", "decoding", "chunking_strategy",
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
                    "encoding": {f"{name}[]": {"explode": True} for name in LIST_FIELDS if name in FIELDS[task]},
                }
            },
        },
        "responses": {
            "200": {
                "description": "json / verbose_json, text / srt / vtt, or server-sent events with stream=true",
                "content": {"application/json": {}, "text/plain": {}, "text/vtt": {}, "text/event-stream": {}},
            }
        },
    }


async def read_form(request: Request, task: Task) -> tuple[dict, bytes, str | None]:
    """The text fields (list fields as lists) and the uploaded file; anything this route does not take is
    refused with a 400 naming it."""
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
                raise InvalidArgument("file: upload the audio as a file (multipart/form-data), not as text", field="file")
            elif name in NOT_OFFERED and task == "transcribe":
                raise InvalidArgument(f"{key}: {NOT_OFFERED[name]}", field=key)
            elif name not in allowed:
                raise InvalidArgument(
                    f"{key}: not a field of {route}; it takes file, {', '.join(allowed)}", field=key
                )
            elif name == "chunking_strategy" and key != name:
                # The SDK sends the server_vad object as chunking_strategy[type]=server_vad&chunking_strategy[...]=...
                member = key[len(name):]
                if not (member.startswith("[") and member.endswith("]") and "[" not in member[1:]):
                    raise InvalidArgument(f"{key}: send chunking_strategy[field]=value", field=key)
                strategy = fields.setdefault(name, {})
                if not isinstance(strategy, dict) or member[1:-1] in strategy:
                    raise InvalidArgument(f"{key}: given more than once", field=key)
                strategy[member[1:-1]] = value
            elif name in LIST_FIELDS:
                if key not in (name, f"{name}[]"):
                    raise InvalidArgument(f"{key}: send the list as {name}[]=value, once per value", field=key)
                fields.setdefault(name, []).append(value)
            elif key != name:
                raise InvalidArgument(f"{key}: {name} takes one value, not a list or object", field=key)
            elif name in fields:
                raise InvalidArgument(f"{name}: given more than once", field=name)
            else:
                fields[name] = value
    if data is None:
        raise InvalidArgument("file: upload the audio as a file field named file", field="file")
    return fields, data, filename


def render(transcript: Transcript, body: TranscriptionRequest, task: str, runner: ASRRunner) -> Response:
    # Text formats have no room for the path that decoded the request, so every format also says it in headers.
    headers = {"x-asr-decoding": transcript.path, "x-asr-language": transcript.language}
    match body.response_format:
        case "json":
            return JSONResponse(json_body(transcript), headers=headers)
        case "verbose_json":
            return JSONResponse(verbose_json_body(transcript, task, body, runner), headers=headers)
        case "text":
            return PlainTextResponse(transcript.text, headers=headers)
        case "srt":
            return PlainTextResponse(srt(transcript), headers=headers)
        case "vtt":
            return PlainTextResponse(vtt(transcript), media_type="text/vtt", headers=headers)


def sse(event: dict) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"


def create_router(runner: ASRRunner, batcher: DynamicBatcher, settings: ASRSettings) -> APIRouter:
    router = APIRouter(tags=["asr"])

    async def transcribe(request: Request, task: Task) -> Response:
        fields, data, filename = await read_form(request, task)
        body = parse(TranscriptionRequest, fields)
        check_openai_combinations(body)
        options, language = check_request(body, task, runner, settings)
        audio = await run_in_threadpool(
            decode_audio,
            data,
            max_seconds=settings.max_audio_seconds,
            filename=filename,
            min_rate=settings.min_sample_rate,
            max_rate=settings.max_sample_rate,
            max_channels=settings.max_channels,
        )
        job = build_job(body, options, language, audio)
        if body.stream:
            # Refused here while a status code can still say so; later errors become an error event.
            batcher.admit(runner.cost(job), job.nbytes)
            return StreamingResponse(
                stream_events(request, job),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        transcript = await batcher.submit(
            job, key=job.batch_key, disconnected=request.is_disconnected, cost=runner.cost(job), nbytes=job.nbytes
        )
        return render(transcript, body, task, runner)

    async def stream_events(request: Request, job: ASRJob) -> AsyncIterator[str]:
        try:
            async for event in batcher.stream(
                job, key=job.batch_key, disconnected=request.is_disconnected, cost=runner.cost(job), nbytes=job.nbytes
            ):
                if isinstance(event, Partial):
                    delta = {"type": "transcript.text.delta", "delta": event.delta}
                    if event.logprobs is not None:
                        delta["logprobs"] = logprobs_body(event.logprobs)
                    yield sse(delta)
                elif isinstance(event, Done):
                    transcript: Transcript = event.result
                    done = {"type": "transcript.text.done", "text": transcript.text, "decoding": transcript.path}
                    if transcript.logprobs is not None:
                        done["logprobs"] = logprobs_body(transcript.logprobs)
                    yield sse(done)
        except ServiceError as exc:
            yield f"event: error\ndata: {json.dumps(exc.body())}\n\n"
        except Exception as exc:
            log.exception("transcription stream failed")
            error = {"code": "internal", "message": f"internal error: {type(exc).__name__}", "type": "internal"}
            yield f"event: error\ndata: {json.dumps({'error': error})}\n\n"

    @router.post("/v1/audio/transcriptions", openapi_extra=form_schema("transcribe"))
    async def transcriptions(request: Request) -> Response:
        """multipart/form-data: `file` and OpenAI's transcription fields. `model` may be the served model's id,
        whisper-1, gpt-4o-transcribe or gpt-4o-mini-transcribe."""
        return await transcribe(request, "transcribe")

    @router.post("/v1/audio/translations", openapi_extra=form_schema("translate"))
    async def translations(request: Request) -> Response:
        """multipart/form-data: `file` and OpenAI's translation fields (English text from any spoken language)."""
        return await transcribe(request, "translate")

    return router
