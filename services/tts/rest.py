"""REST routes: POST /v1/audio/speech (OpenAI's), POST /v1/audio/conversions, GET /v1/voices."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response, StreamingResponse

from services.kit.audio import encode_audio
from services.kit.batcher import Done, DynamicBatcher
from services.kit.validation import parse

from .encoding import MEDIA_TYPES, stream_chunk
from .metrics import TIME_TO_FIRST_AUDIO
from .runner import AudioResult, SentenceAudio, SpeechRunner
from .schemas import ConversionRequest, SpeechRequest, build_conversion_job, build_speech_job
from .settings import TTSSettings

log = logging.getLogger(__name__)


def audio_response(result: AudioResult, audio: bytes, media_type: str) -> Response:
    headers = {"X-Sample-Rate": str(result.sample_rate), "X-Audio-Duration": f"{result.duration:.3f}"}
    return Response(audio, media_type=media_type, headers=headers)


def create_router(
    runner: SpeechRunner, speech: DynamicBatcher, conversion: DynamicBatcher, settings: TTSSettings
) -> APIRouter:
    router = APIRouter(tags=["tts"])

    @router.post("/v1/audio/speech", response_class=Response)
    async def create_speech(body: SpeechRequest, request: Request) -> Response:
        received = time.perf_counter()
        job, fmt = build_speech_job(body, runner, settings)
        if not job.stream:
            result = await speech.submit(
                job, key=job.batch_key, disconnected=request.is_disconnected, cost=runner.cost(job)
            )
            audio, media_type = await asyncio.to_thread(encode_audio, result.samples, result.sample_rate, fmt)
            TIME_TO_FIRST_AUDIO.labels("rest", "whole").observe(time.perf_counter() - received)
            return audio_response(result, audio, media_type)

        events = speech.stream(
            job, key=job.batch_key, disconnected=request.is_disconnected, cost=runner.cost(job)
        )
        # Wait for the first sentence before answering, so that a failure still gets its status code.
        first = await anext(events)
        TIME_TO_FIRST_AUDIO.labels("rest", "stream").observe(time.perf_counter() - received)
        return StreamingResponse(
            _stream(first, events, fmt, runner.sample_rate),
            media_type=MEDIA_TYPES[fmt],
            headers={"X-Sample-Rate": str(runner.sample_rate)},
        )

    @router.post("/v1/audio/conversions", response_class=Response)
    async def convert_voice(
        request: Request,
        file: UploadFile = File(description="speech to convert: wav, flac, ogg or mp3"),
        voice: str | None = Form(None),
        speaker_embedding: str | None = Form(None, description="JSON array of 512 numbers, instead of voice"),
        response_format: str = Form("wav"),
        seed: int | None = Form(None),
    ) -> Response:
        options = parse(
            ConversionRequest,
            {
                "voice": voice,
                "speaker_embedding": speaker_embedding,
                "response_format": response_format,
                "seed": seed,
            },
        )
        data = await file.read()
        job, fmt = await asyncio.to_thread(
            build_conversion_job, options, data, file.filename, runner, settings
        )
        result = await conversion.submit(
            job, key=job.batch_key, disconnected=request.is_disconnected, cost=runner.cost(job)
        )
        audio, media_type = await asyncio.to_thread(encode_audio, result.samples, result.sample_rate, fmt)
        return audio_response(result, audio, media_type)

    @router.get("/v1/voices")
    async def list_voices() -> dict:
        voices = runner.voices
        data = [{"id": name, "object": "voice", "default": name == voices.default} for name in voices.names()]
        return {"object": "list", "data": data}

    return router


async def _stream(first, events: AsyncIterator, fmt: str, sample_rate: int) -> AsyncIterator[bytes]:
    """Chunked body: one chunk per sentence. A failure mid-stream aborts the connection, so that a client
    sees a truncated transfer rather than audio that merely ends early."""
    try:
        event = first
        index = 0
        while not isinstance(event, Done):
            if isinstance(event, SentenceAudio):
                yield stream_chunk(event.samples, sample_rate, fmt, first=index == 0)
                index += 1
            event = await anext(events)
    finally:
        await events.aclose()
