"""REST renderers: POST /v1/audio/speech as OpenAI answers it (a file, streamed audio or server-sent events),
POST /v1/audio/conversions (a file) and GET /v1/voices."""

import logging
import math
import time
from collections.abc import AsyncIterator

from fastapi.responses import Response, StreamingResponse

from services.kit.operations import Call
from services.kit.streaming import rest_stream

from .answers import encoded, sentence_pieces
from .encoding import SSE_DELTA_BYTES, SSE_MEDIA_TYPE, EncodedAudio, StreamEncoder, sse_delta, sse_done
from .metrics import TIME_TO_FIRST_AUDIO
from .runner import SpeechRunner
from .schemas import ConversionPlan, SpeechPlan
from .synthesis import AudioResult, SentenceAudio
from .voices import VoiceBank

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


async def rest_speech_answer(call: Call[SpeechPlan], runner: SpeechRunner) -> Response:
    plan = call.plan
    if plan.ignored:
        log.debug("speech request: %s accepted but not applied", ", ".join(plan.ignored))
    if plan.job.stream:
        encoder = StreamEncoder(plan.fmt, runner.sample_rate)
        headers = {"X-Sample-Rate": str(encoder.sample_rate), **plan_headers(plan)}
        parts = sentence_pieces(call, encoder, "rest")
        if plan.events:
            events = _sentence_events(parts, plan.input_tokens, runner.samples_per_frame)
            return await rest_stream(events, SSE_MEDIA_TYPE, headers)
        return await rest_stream((piece async for _, piece in parts), encoder.media_type, headers)
    result, audio = await encoded(call, plan.fmt)
    TIME_TO_FIRST_AUDIO.labels("rest", "whole").observe(time.perf_counter() - call.received)
    if not plan.events:
        return audio_response(result, audio, plan_headers(plan))
    headers = {"X-Sample-Rate": str(audio.sample_rate), **plan_headers(plan)}
    usage = (plan.input_tokens, _frames(result.samples.size, runner.samples_per_frame))
    return StreamingResponse(_file_events(audio.data, *usage), media_type=SSE_MEDIA_TYPE, headers=headers)


async def rest_conversion_answer(call: Call[ConversionPlan]) -> Response:
    return audio_response(*await encoded(call, call.plan.fmt))


def render_voices(voices: VoiceBank) -> dict:
    """GET /v1/voices: the installed voices, then each alias with the voice it selects (`alias_of`)."""
    data = [{"id": name, "object": "voice", "default": name == voices.default} for name in voices.names()]
    data += [
        {"id": alias, "object": "voice", "default": False, "alias_of": voice}
        for alias, voice in voices.aliases.items()
    ]
    return {"object": "list", "data": data}


def _frames(samples: int, samples_per_frame: int) -> int:
    """An SSE answer's usage counts its audio in spectrogram frames (the vocoder's hop) as output tokens."""
    return math.ceil(samples / samples_per_frame)


async def _sentence_events(
    parts: AsyncIterator[tuple[SentenceAudio, bytes]], input_tokens: int, samples_per_frame: int
) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE: a delta per sentence, then done with the usage (only after the last sentence)."""
    samples = 0
    async for sentence, piece in parts:
        samples += sentence.samples.size
        if piece:
            yield sse_delta(piece)
    yield sse_done(input_tokens, _frames(samples, samples_per_frame))


async def _file_events(audio: bytes, input_tokens: int, output_tokens: int) -> AsyncIterator[bytes]:
    """A whole file (formats that cannot stream) as SSE deltas of bounded size."""
    for start in range(0, len(audio), SSE_DELTA_BYTES):
        yield sse_delta(audio[start : start + SSE_DELTA_BYTES])
    yield sse_done(input_tokens, output_tokens)
