"""gRPC servicer: the same validation, audio decoding and batcher as REST, over asr.v1.SpeechRecognition."""

import asyncio

from services.kit.audio import decode_audio, decode_pcm16
from services.kit.batcher import DynamicBatcher
from services.kit.errors import InvalidArgument, PayloadTooLarge
from services.kit.grpc_server import time_remaining
from services.kit.validation import parse

from . import asr_pb2 as pb
from . import asr_pb2_grpc as pb_grpc
from .runner import AsrRunner
from .schemas import TranscriptionRequest, build_job, check_request
from .settings import AsrSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SpeechRecognition"].full_name


class SpeechRecognitionServicer(pb_grpc.SpeechRecognitionServicer):
    def __init__(self, runner: AsrRunner, batcher: DynamicBatcher, settings: AsrSettings):
        self.runner = runner
        self.batcher = batcher
        self.settings = settings

    async def Transcribe(self, request: pb.TranscribeRequest, context) -> pb.TranscribeResponse:
        task, body, checked = self._options(request.options)
        audio = await asyncio.to_thread(
            decode_audio,
            request.audio,
            max_seconds=self.settings.max_audio_seconds,
            filename=request.filename or None,
        )
        return await self._transcribe(task, body, checked, audio, context)

    async def TranscribeStream(self, request_iterator, context) -> pb.TranscribeResponse:
        config: pb.StreamConfig | None = None
        chunks, size = [], 0
        async for message in request_iterator:
            if message.WhichOneof("part") == "config":
                if config is not None or chunks:
                    raise InvalidArgument("config: send it once, in the first message", field="config")
                config = message.config
            elif message.WhichOneof("part") == "audio":
                size += len(message.audio)
                if size > self.settings.max_body_bytes:
                    raise PayloadTooLarge(
                        f"audio stream exceeds the {self.settings.max_body_bytes} byte limit", field="audio"
                    )
                chunks.append(message.audio)
        config = config or pb.StreamConfig()
        task, body, checked = self._options(config.options)
        data, limit = b"".join(chunks), self.settings.max_audio_seconds
        if config.pcm_sample_rate > 0:
            audio = await asyncio.to_thread(decode_pcm16, data, config.pcm_sample_rate, max_seconds=limit)
        else:
            audio = await asyncio.to_thread(
                decode_audio, data, max_seconds=limit, filename=config.filename or None
            )
        return await self._transcribe(task, body, checked, audio, context)

    def _options(self, options: pb.TranscribeOptions) -> tuple[str, TranscriptionRequest, tuple]:
        task = options.task or "transcribe"
        if task not in ("transcribe", "translate"):
            raise InvalidArgument(f"task: must be 'transcribe' or 'translate', got {task!r}", field="task")
        fields = {
            "model": options.model or None,
            "language": options.language if options.HasField("language") else None,
            "prompt": options.prompt if options.HasField("prompt") else None,
            "response_format": "verbose_json" if options.timestamps else "json",
            "temperature": options.temperature if options.HasField("temperature") else 0.0,
            "decoding": options.decoding or "auto",
        }
        body = parse(TranscriptionRequest, fields)
        return task, body, check_request(body, task, self.runner, self.settings)

    async def _transcribe(
        self, task: str, body: TranscriptionRequest, checked: tuple, audio, context
    ) -> pb.TranscribeResponse:
        job = build_job(body, *checked, audio)
        transcript = await self.batcher.submit(job, key=job.batch_key, timeout=time_remaining(context))
        return pb.TranscribeResponse(
            text=transcript.text,
            language=transcript.language,
            duration=transcript.duration,
            segments=[
                pb.Segment(id=i, start=s.start, end=s.end, text=s.text)
                for i, s in enumerate(transcript.segments or [])
            ],
            decoding=transcript.path,
            model=self.runner.model_id,
            task=task,
        )
