"""What every transport's answer is made of, below the transports that render it (REST, gRPC, OIP): the runner's
whole result with its file, and the sentences of a streamed request with their pieces of the encoded stream."""

import asyncio
import time
from collections.abc import AsyncIterator

from services.kit.operations import Call

from .encoding import EncodedAudio, StreamEncoder, encode
from .metrics import TIME_TO_FIRST_AUDIO
from .schemas import SpeechPlan
from .synthesis import AudioResult, SentenceAudio


async def encoded(call: Call, fmt: str | None) -> tuple[AudioResult, EncodedAudio | None]:
    """The runner's whole result, and its file in `fmt` (encoded off the event loop) unless `fmt` is None."""
    result = await call.result()
    audio = await asyncio.to_thread(encode, result.samples, result.sample_rate, fmt) if fmt else None
    return result, audio


async def sentence_pieces(
    call: Call[SpeechPlan], encoder: StreamEncoder | None, protocol: str
) -> AsyncIterator[tuple[SentenceAudio, bytes]]:
    """Each sentence as the runner makes it, with its piece of the encoded stream (b"" without an encoder)."""
    last = len(call.plan.job.sentences) - 1
    async for event in call.events():
        if isinstance(event, SentenceAudio):
            if event.index == 0:
                TIME_TO_FIRST_AUDIO.labels(protocol, "stream").observe(time.perf_counter() - call.received)
            yield event, encoder.piece(event.samples, last=event.index == last) if encoder else b""
