"""gRPC servicer: the same validation, audio decoding and batcher as REST, over asr.v1.SpeechRecognition."""

import asyncio
from collections.abc import AsyncIterator, Iterable

from protos import asr_pb2 as pb
from protos import asr_pb2_grpc as pb_grpc
from services.kit.audio import check_sample_rate, decode_audio, decode_pcm16
from services.kit.batcher import Done, DynamicBatcher
from services.kit.errors import DeadlineExceeded, InvalidArgument, PayloadTooLarge
from services.kit.grpc_server import time_remaining

from .runner import ASRRunner, Partial, TokenLogprob, Transcript
from .schemas import TranscriptionRequest, build_job, check_request, options_request
from .settings import ASRSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SpeechRecognition"].full_name


class SpeechRecognitionServicer(pb_grpc.SpeechRecognitionServicer):
    def __init__(self, runner: ASRRunner, batcher: DynamicBatcher, settings: ASRSettings):
        self.runner = runner
        self.batcher = batcher
        self.settings = settings

    async def Transcribe(self, request: pb.TranscribeRequest, context) -> pb.TranscribeResponse:
        task, body, checked = self._options(request.options)
        audio = await asyncio.to_thread(self._decode_file, request.audio, request.filename or None)
        return await self._transcribe(task, body, checked, audio, context)

    async def TranscribeUpdates(self, request: pb.TranscribeRequest, context) -> AsyncIterator[pb.TranscribeUpdate]:
        task, body, checked = self._options(request.options)
        audio = await asyncio.to_thread(self._decode_file, request.audio, request.filename or None)
        job = build_job(body.model_copy(update={"stream": True}), *checked, audio)
        async for event in self.batcher.stream(
            job, key=job.batch_key, timeout=time_remaining(context), cost=self.runner.cost(job),
            nbytes=job.nbytes,
        ):
            if isinstance(event, Partial):
                delta = pb.TranscriptDelta(text=event.delta, logprobs=_logprobs(event.logprobs or ()))
                yield pb.TranscribeUpdate(delta=delta)
            elif isinstance(event, Done):
                yield pb.TranscribeUpdate(done=self._response(event.result, task))

    async def TranscribeStream(self, request_iterator, context) -> pb.TranscribeResponse:
        config, chunks = await self._receive_stream(request_iterator)
        task, body, checked = self._options(config.options)
        data = b"".join(chunks)
        if config.pcm_sample_rate:
            audio = await asyncio.to_thread(
                decode_pcm16,
                data,
                config.pcm_sample_rate,
                max_seconds=self.settings.max_audio_seconds,
                min_rate=self.settings.min_sample_rate,
                max_rate=self.settings.max_sample_rate,
            )
        else:
            audio = await asyncio.to_thread(self._decode_file, data, config.filename or None)
        return await self._transcribe(task, body, checked, audio, context)

    def _decode_file(self, data: bytes, filename: str | None):
        return decode_audio(
            data,
            max_seconds=self.settings.max_audio_seconds,
            filename=filename,
            min_rate=self.settings.min_sample_rate,
            max_rate=self.settings.max_sample_rate,
            max_channels=self.settings.max_channels,
        )

    async def _receive_stream(self, request_iterator) -> tuple[pb.StreamConfig, list[bytes]]:
        """The config and the audio chunks of a TranscribeStream call, cut off as soon as the stream sends more
        bytes or messages than one request may carry, or stalls: a stream that never ends is never buffered."""
        settings = self.settings
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

    def _options(self, options: pb.TranscribeOptions) -> tuple[str, TranscriptionRequest, tuple]:
        task, body = options_request(
            options.task or "transcribe",
            timestamps=options.timestamps,
            word_timestamps=options.word_timestamps,
            logprobs=options.logprobs,
            model=options.model or None,
            language=options.language if options.HasField("language") else None,
            prompt=options.prompt if options.HasField("prompt") else None,
            temperature=options.temperature if options.HasField("temperature") else 0.0,
            decoding=options.decoding or "auto",
        )
        return task, body, check_request(body, task, self.runner, self.settings)

    async def _transcribe(
        self, task: str, body: TranscriptionRequest, checked: tuple, audio, context
    ) -> pb.TranscribeResponse:
        job = build_job(body, *checked, audio)
        transcript = await self.batcher.submit(
            job, key=job.batch_key, timeout=time_remaining(context), cost=self.runner.cost(job),
            nbytes=job.nbytes,
        )
        return self._response(transcript, task)

    def _response(self, transcript: Transcript, task: str) -> pb.TranscribeResponse:
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
            model=self.runner.model_id,
            task=task,
        )


def _logprobs(logprobs: Iterable[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [pb.TokenLogprob(token=t.token, bytes=bytes(t.bytes), logprob=t.logprob) for t in logprobs]
