"""REST routes, OpenAI's audio API: POST /v1/audio/transcriptions and /v1/audio/translations (multipart)."""

from typing import Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from services.kit.audio import decode_audio
from services.kit.batcher import DynamicBatcher
from services.kit.errors import InvalidArgument
from services.kit.validation import parse

from .runner import AsrRunner, Transcript
from .schemas import TranscriptionRequest, build_job, check_request, json_body, srt, verbose_json_body, vtt
from .settings import AsrSettings


def render(transcript: Transcript, body: TranscriptionRequest, task: str, runner: AsrRunner) -> Response:
    # Text formats have no room for the path that decoded the request, so every format also says it in headers.
    headers = {"x-asr-decoding": transcript.path, "x-asr-language": transcript.language}
    match body.response_format:
        case "json":
            return JSONResponse(json_body(transcript), headers=headers)
        case "verbose_json":
            return JSONResponse(
                verbose_json_body(transcript, task, body.temperature, runner), headers=headers
            )
        case "text":
            return PlainTextResponse(transcript.text, headers=headers)
        case "srt":
            return PlainTextResponse(srt(transcript), headers=headers)
        case "vtt":
            return PlainTextResponse(vtt(transcript), media_type="text/vtt", headers=headers)


def create_router(runner: AsrRunner, batcher: DynamicBatcher, settings: AsrSettings) -> APIRouter:
    router = APIRouter(tags=["asr"])

    async def transcribe(
        request: Request,
        file: UploadFile,
        fields: dict,
        task: Literal["transcribe", "translate"],
        stream: bool,
    ) -> Response:
        if stream:
            raise InvalidArgument(
                "stream: streamed responses are not offered; use gRPC TranscribeStream", field="stream"
            )
        body = parse(
            TranscriptionRequest, {name: value for name, value in fields.items() if value is not None}
        )
        options, language = check_request(body, task, runner, settings)
        data = await file.read()
        audio = await run_in_threadpool(
            decode_audio,
            data,
            max_seconds=settings.max_audio_seconds,
            filename=file.filename,
            min_rate=settings.min_sample_rate,
            max_rate=settings.max_sample_rate,
            max_channels=settings.max_channels,
        )
        job = build_job(body, options, language, audio)
        transcript = await batcher.submit(
            job, key=job.batch_key, disconnected=request.is_disconnected, cost=runner.cost(job)
        )
        return render(transcript, body, task, runner)

    @router.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: UploadFile = File(description="WAV, FLAC, OGG or MP3"),
        model: str | None = Form(None),
        language: str | None = Form(None),
        prompt: str | None = Form(None),
        response_format: str | None = Form(None),
        temperature: str | None = Form(None),
        decoding: str | None = Form(None, description="extension: auto | assisted | plain"),
        timestamp_granularities: list[str] | None = Form(None, alias="timestamp_granularities[]"),
        stream: bool = Form(False),
    ) -> Response:
        fields = dict(
            model=model,
            language=language,
            prompt=prompt,
            response_format=response_format,
            temperature=temperature,
            decoding=decoding,
            timestamp_granularities=timestamp_granularities,
        )
        return await transcribe(request, file, fields, "transcribe", stream)

    @router.post("/v1/audio/translations")
    async def translations(
        request: Request,
        file: UploadFile = File(description="WAV, FLAC, OGG or MP3"),
        model: str | None = Form(None),
        language: str | None = Form(None, description="extension: the spoken language, detected when unset"),
        prompt: str | None = Form(None),
        response_format: str | None = Form(None),
        temperature: str | None = Form(None),
        decoding: str | None = Form(None, description="extension: auto | assisted | plain"),
        stream: bool = Form(False),
    ) -> Response:
        fields = dict(
            model=model,
            language=language,
            prompt=prompt,
            response_format=response_format,
            temperature=temperature,
            decoding=decoding,
        )
        return await transcribe(request, file, fields, "translate", stream)

    return router
