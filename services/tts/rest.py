"""REST routes: POST /v1/audio/speech (OpenAI's), POST /v1/audio/conversions, GET /v1/voices."""

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response, StreamingResponse

from services.kit.batcher import Done, DynamicBatcher
from services.kit.validation import parse

from .encoding import (
    SSE_DELTA_BYTES,
    SSE_MEDIA_TYPE,
    EncodedAudio,
    StreamEncoder,
    encode,
    sse_delta,
    sse_done,
)
from .metrics import TIME_TO_FIRST_AUDIO
from .runner import AudioResult, SentenceAudio, SpeechRunner
from .schemas import (
    ConversionRequest,
    SpeechPlan,
    SpeechRequest,
    build_conversion_job,
    build_speech_job,
)
from .settings import TTSSettings

log = logging.getLogger(__name__)

# Accepted request parameters that did not change the audio (e.g. `instructions`), comma-separated.
IGNORED_HEADER = "x-modelserve-ignored"
# The installed voice that spoke: what an alias such as `alloy` selected.
VOICE_HEADER = "x-modelserve-voice"


def audio_response(
    result: AudioResult, audio: EncodedAudio, headers: dict[str, str] | None = None
) -> Response:
    headers = {
        "X-Sample-Rate": str(audio.sample_rate),
        "X-Audio-Duration": f"{result.duration:.3f}",
        **(headers or {}),
    }
    return Response(audio.data, media_type=audio.media_type, headers=headers)


def plan_headers(plan: SpeechPlan) -> dict[str, str]:
    headers = {VOICE_HEADER: plan.voice} if plan.voice else {}
    if plan.ignored:
        headers[IGNORED_HEADER] = ", ".join(plan.ignored)
    return headers


def create_router(
    runner: SpeechRunner, speech: DynamicBatcher, conversion: DynamicBatcher, settings: TTSSettings
) -> APIRouter:
    router = APIRouter(tags=["tts"])

    @router.post("/v1/audio/speech", response_class=Response)
    async def create_speech(body: SpeechRequest, request: Request) -> Response:
        received = time.perf_counter()
        plan = build_speech_job(body, runner, settings)
        if plan.ignored:
            log.debug("speech request: %s accepted but not applied", ", ".join(plan.ignored))
        job, cost = plan.job, runner.cost(plan.job)
        if not job.stream:
            result = await speech.submit(
                job, key=job.batch_key, disconnected=request.is_disconnected, cost=cost
            )
            audio = await asyncio.to_thread(encode, result.samples, result.sample_rate, plan.fmt)
            TIME_TO_FIRST_AUDIO.labels("rest", "whole").observe(time.perf_counter() - received)
            if not plan.events:
                return audio_response(result, audio, plan_headers(plan))
            headers = {"X-Sample-Rate": str(audio.sample_rate), **plan_headers(plan)}
            usage = (plan.input_tokens, _frames(result.samples.size, runner.samples_per_frame))
            return StreamingResponse(_file_events(audio.data, *usage), media_type=SSE_MEDIA_TYPE, headers=headers)

        events = speech.stream(job, key=job.batch_key, disconnected=request.is_disconnected, cost=cost)
        # Wait for the first sentence before answering, so that a failure still gets its status code.
        first = await anext(events)
        TIME_TO_FIRST_AUDIO.labels("rest", "stream").observe(time.perf_counter() - received)
        stream = _SentenceStream(
            first, events, StreamEncoder(plan.fmt, runner.sample_rate), len(job.sentences)
        )
        headers = {"X-Sample-Rate": str(stream.encoder.sample_rate), **plan_headers(plan)}
        if not plan.events:
            return StreamingResponse(stream.pieces(), media_type=stream.encoder.media_type, headers=headers)
        sse = _stream_events(stream, plan.input_tokens, runner.samples_per_frame)
        return StreamingResponse(sse, media_type=SSE_MEDIA_TYPE, headers=headers)

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
            job, key=job.batch_key, disconnected=request.is_disconnected, cost=runner.cost(job),
            nbytes=job.samples.nbytes,
        )
        audio = await asyncio.to_thread(encode, result.samples, result.sample_rate, fmt)
        return audio_response(result, audio)

    @router.get("/v1/voices")
    async def list_voices() -> dict:
        """The installed voices, then each alias with the voice it selects (`alias_of`)."""
        voices = runner.voices
        data = [{"id": name, "object": "voice", "default": name == voices.default} for name in voices.names()]
        data += [
            {"id": alias, "object": "voice", "default": False, "alias_of": voice}
            for alias, voice in voices.aliases.items()
        ]
        return {"object": "list", "data": data}

    return router


class _SentenceStream:
    """A streamed answer's bytes, one piece per sentence as the runner emits it. A failure mid-stream aborts the
    connection, so that a client sees a truncated transfer rather than audio that merely ends early."""

    def __init__(self, first, events: AsyncIterator, encoder: StreamEncoder, sentences: int):
        self.first, self.events, self.encoder, self.sentences = first, events, encoder, sentences
        self.samples = 0  # at the model's rate, sent so far

    async def pieces(self) -> AsyncIterator[bytes]:
        try:
            event = self.first
            while not isinstance(event, Done):
                if isinstance(event, SentenceAudio):
                    self.samples += event.samples.size
                    yield self.encoder.piece(event.samples, last=event.index == self.sentences - 1)
                event = await anext(self.events)
        finally:
            await self.events.aclose()


def _frames(samples: int, samples_per_frame: int) -> int:
    """An SSE answer's usage counts its audio in spectrogram frames (the vocoder's hop) as output tokens."""
    return math.ceil(samples / samples_per_frame)


async def _stream_events(
    stream: _SentenceStream, input_tokens: int, samples_per_frame: int
) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE: a delta per sentence, then done with the usage (only after the last sentence)."""
    pieces = stream.pieces()
    try:
        async for piece in pieces:
            if piece:
                yield sse_delta(piece)
        yield sse_done(input_tokens, _frames(stream.samples, samples_per_frame))
    finally:
        await pieces.aclose()


async def _file_events(audio: bytes, input_tokens: int, output_tokens: int) -> AsyncIterator[bytes]:
    """A whole file (formats that cannot stream) as SSE deltas of bounded size."""
    for start in range(0, len(audio), SSE_DELTA_BYTES):
        yield sse_delta(audio[start : start + SSE_DELTA_BYTES])
    yield sse_done(input_tokens, output_tokens)
