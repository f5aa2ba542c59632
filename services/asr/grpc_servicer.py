"""gRPC asr.v1.SpeechRecognition bound to the transcription operation: unary Transcribe, server-streaming
TranscribeUpdates and client-streaming TranscribeStream, with REST's checks, audio limits and batcher."""

import asyncio
from collections.abc import AsyncIterator, Iterable

from protos import asr_pb2 as pb
from protos import asr_pb2_grpc as pb_grpc
from services.kit.audio import check_sample_rate
from services.kit.batcher import Done
from services.kit.errors import DeadlineExceeded, InvalidArgument, PayloadTooLarge
from services.kit.operations import Call, Operation, Upload
from services.kit.service import GrpcServicer

from .runner import ASRRunner, Partial, TokenLogprob, Transcript
from .schemas import Samples, TranscriptionPlan, flag_fields
from .settings import ASRSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SpeechRecognition"].full_name


def create_servicer(transcription: Operation, runner: ASRRunner, settings: ASRSettings) -> GrpcServicer:
    async def transcribe(call: Call[TranscriptionPlan]) -> pb.TranscribeResponse:
        return response_message(await call.result(), call.job.request.task, runner)

    async def updates(call: Call[TranscriptionPlan]) -> AsyncIterator[pb.TranscribeUpdate]:
        async for event in call.events():
            if isinstance(event, Partial):
                delta = pb.TranscriptDelta(text=event.delta, logprobs=_logprobs(event.logprobs or ()))
                yield pb.TranscribeUpdate(delta=delta)
            elif isinstance(event, Done):
                yield pb.TranscribeUpdate(done=response_message(event.result, call.job.request.task, runner))

    def file_fields(stream: bool):
        return lambda message: options_fields(
            message.options, file=Upload(data=message.audio, filename=message.filename or None), stream=stream
        )

    async def stream_fields(request_iterator) -> dict:
        config, chunks = await receive_stream(request_iterator, settings)
        data = b"".join(chunks)
        if config.pcm_sample_rate:
            audio = {"samples": Samples(data=data, rate=config.pcm_sample_rate)}
        else:
            audio = {"file": Upload(data=data, filename=config.filename or None)}
        return options_fields(config.options, **audio)

    servicer = pb_grpc.SpeechRecognitionServicer()
    servicer.Transcribe = transcription.grpc_method(answer=transcribe, to_fields=file_fields(False))
    servicer.TranscribeUpdates = transcription.grpc_stream(updates, to_fields=file_fields(True))
    servicer.TranscribeStream = transcription.grpc_method(answer=transcribe, to_fields=stream_fields)
    return GrpcServicer(pb_grpc.add_SpeechRecognitionServicer_to_server, servicer, SERVICE_NAME)


def options_fields(options: pb.TranscribeOptions, **fields) -> dict:
    return flag_fields(
        options.task or "transcribe",
        timestamps=options.timestamps,
        word_timestamps=options.word_timestamps,
        logprobs=options.logprobs,
        model=options.model or None,
        language=options.language if options.HasField("language") else None,
        prompt=options.prompt if options.HasField("prompt") else None,
        temperature=options.temperature if options.HasField("temperature") else 0.0,
        decoding=options.decoding or "auto",
        **fields,
    )


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


def response_message(transcript: Transcript, task: str, runner: ASRRunner) -> pb.TranscribeResponse:
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
        logprobs=_logprobs(transcript.logprobs or ()),
        decoding=transcript.path,
        model=runner.model_id,
        task=task,
    )


def _logprobs(logprobs: Iterable[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [pb.TokenLogprob(token=t.token, bytes=bytes(t.bytes), logprob=t.logprob) for t in logprobs]
