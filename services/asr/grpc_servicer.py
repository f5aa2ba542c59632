"""Kept apart from service.py for TranscribeStream's client-streaming reader, bounded by bytes, messages and time.

The readers and renderers of gRPC asr.v1.SpeechRecognition (service.py binds them): request messages as the
transcription's fields, the transcript as a TranscribeResponse and as TranscribeUpdate messages."""

import asyncio
from collections.abc import AsyncIterator, Iterable

from protos import asr_pb2 as pb
from services.kit.audio import check_sample_rate
from services.kit.batcher import Done
from services.kit.errors import DeadlineExceeded, InvalidArgument, PayloadTooLarge
from services.kit.operations import Call, Upload

from .domain import Partial, TokenLogprob, Transcript
from .schemas import Samples, TranscriptionPlan, checked_task, timestamps_of
from .settings import ASRSettings


def grpc_options_fields(options: pb.TranscribeOptions, **fields) -> dict:
    """The transcription's fields from a request's options (and its audio, in `fields`)."""
    return {
        **fields,
        "task": checked_task(options.task or "transcribe"),
        "timestamps": timestamps_of(options.timestamps, options.word_timestamps),
        "logprobs": options.logprobs,
        "model": options.model or None,
        "language": options.language if options.HasField("language") else None,
        "prompt": options.prompt if options.HasField("prompt") else None,
        "temperature": options.temperature if options.HasField("temperature") else 0.0,
        "decoding": options.decoding or "auto",
    }


def grpc_file_fields(message: pb.TranscribeRequest, stream: bool) -> dict:
    """A unary request's fields: its options and its audio file."""
    file = Upload(data=message.audio, filename=message.filename or None)
    return grpc_options_fields(message.options, file=file, stream=stream)


async def grpc_stream_fields(request_iterator, settings: ASRSettings) -> dict:
    """A TranscribeStream call's fields: the config's options and the audio its chunks carry."""
    config, chunks = await receive_stream(request_iterator, settings)
    data = b"".join(chunks)
    if config.pcm_sample_rate:
        audio = {"samples": Samples(data=data, rate=config.pcm_sample_rate)}
    else:
        audio = {"file": Upload(data=data, filename=config.filename or None)}
    return grpc_options_fields(config.options, **audio)


async def receive_stream(request_iterator, settings: ASRSettings) -> tuple[pb.StreamConfig, list[bytes]]:
    """The config and the audio chunks of a TranscribeStream call, cut off as soon as the stream sends more
    bytes or messages than one request may carry, or stalls: a stream that never ends is never buffered."""
    config: pb.StreamConfig | None = None
    chunks, size, count = [], 0, 0
    max_bytes = settings.max_body_bytes
    too_much = f"audio stream exceeds the {max_bytes} byte limit (max_body_bytes)"
    loop = asyncio.get_running_loop()
    # Even a live microphone stream ends within the longest audio accepted plus the upload slack.
    ends_at = loop.time() + settings.max_audio_seconds + settings.body_timeout_s
    messages = aiter(request_iterator)
    while True:
        wait = min(settings.body_timeout_s, ends_at - loop.time())
        try:
            message = await asyncio.wait_for(anext(messages), max(wait, 0.0))
        except StopAsyncIteration:
            break
        except TimeoutError:
            if loop.time() >= ends_at:
                raise DeadlineExceeded(
                    f"audio stream still open after {settings.max_audio_seconds + settings.body_timeout_s:g} s "
                    "(max_audio_seconds + body_timeout_s)",
                    field="audio",
                ) from None
            raise DeadlineExceeded(
                f"audio stream sent nothing for {settings.body_timeout_s:g} s (body_timeout_s)", field="audio"
            ) from None
        count += 1
        if count > settings.max_stream_messages:
            raise PayloadTooLarge(
                f"audio stream exceeds the {settings.max_stream_messages} message limit (max_stream_messages)",
                field="audio",
            )
        if message.WhichOneof("part") == "config":
            if config is not None or chunks:
                raise InvalidArgument("config: send it once, in the first message", field="config")
            config = message.config
            if config.pcm_sample_rate:
                check_sample_rate(
                    config.pcm_sample_rate,
                    settings.min_sample_rate,
                    settings.max_sample_rate,
                    "raw PCM",
                    field="pcm_sample_rate",
                )
                pcm_bytes = 2 * int(settings.max_audio_seconds * config.pcm_sample_rate)
                if pcm_bytes < max_bytes:
                    max_bytes = pcm_bytes
                    too_much = (
                        f"audio stream carries more than {pcm_bytes} bytes of 16-bit PCM at "
                        f"{config.pcm_sample_rate} Hz; the limit is {settings.max_audio_seconds:g} s"
                    )
        elif message.WhichOneof("part") == "audio":
            size += len(message.audio)
            if size > max_bytes:
                raise PayloadTooLarge(too_much, field="audio")
            chunks.append(message.audio)
    return config or pb.StreamConfig(), chunks


async def grpc_updates(call: Call[TranscriptionPlan], model_id: str) -> AsyncIterator[pb.TranscribeUpdate]:
    """TranscribeUpdates: a delta as each window is decoded, then the whole response."""
    async for event in call.events():
        if isinstance(event, Partial):
            delta = pb.TranscriptDelta(text=event.delta, logprobs=grpc_logprobs(event.logprobs or ()))
            yield pb.TranscribeUpdate(delta=delta)
        elif isinstance(event, Done):
            yield pb.TranscribeUpdate(done=grpc_response(event.result, call.plan.request.task, model_id))


def grpc_response(transcript: Transcript, task: str, model_id: str) -> pb.TranscribeResponse:
    return pb.TranscribeResponse(
        text=transcript.text,
        language=transcript.language,
        duration=transcript.duration,
        segments=[
            pb.Segment(
                id=i,
                start=s.start,
                end=s.end,
                text=s.text,
                seek=s.seek,
                tokens=s.tokens,
                temperature=s.temperature,
                avg_logprob=s.avg_logprob or 0.0,
                compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob or 0.0,
            )
            for i, s in enumerate(transcript.segments or [])
        ],
        words=[pb.Word(word=w.word, start=w.start, end=w.end) for w in transcript.words or []],
        logprobs=grpc_logprobs(transcript.logprobs or ()),
        decoding=transcript.path,
        model=model_id,
        task=task,
    )


def grpc_logprobs(logprobs: Iterable[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [pb.TokenLogprob(token=t.token, bytes=bytes(t.bytes), logprob=t.logprob) for t in logprobs]
