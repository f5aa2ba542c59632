"""gRPC servicer: the same validation, batchers and encoding as REST, over tts.v1.TextToSpeech."""

import asyncio
import time

from google.protobuf.json_format import MessageToDict

from protos import tts_pb2 as pb
from protos import tts_pb2_grpc as pb_grpc
from services.kit.batcher import Done, DynamicBatcher
from services.kit.grpc_server import time_remaining
from services.kit.validation import parse

from .encoding import StreamEncoder, encode
from .metrics import TIME_TO_FIRST_AUDIO
from .runner import SentenceAudio, SpeechRunner
from .schemas import ConversionRequest, SpeechRequest, build_conversion_job, build_speech_job
from .settings import TTSSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TextToSpeech"].full_name


def _fields(message, **extra) -> dict:
    """Set fields only (proto3 empty strings mean "unset"), with the REST schema's names."""
    fields = MessageToDict(message, preserving_proto_field_name=True)
    if "speaker_embedding" in fields:
        fields["speaker_embedding"] = list(message.speaker_embedding)
    return {**fields, **extra}


class TextToSpeechServicer(pb_grpc.TextToSpeechServicer):
    def __init__(
        self, runner: SpeechRunner, speech: DynamicBatcher, conversion: DynamicBatcher, settings: TTSSettings
    ):
        self.runner = runner
        self.speech = speech
        self.conversion = conversion
        self.settings = settings

    async def Synthesize(self, request: pb.SynthesizeRequest, context) -> pb.SynthesizeResponse:
        received = time.perf_counter()
        # A unary answer has nothing to gain from the streaming plan (first sentence alone, then the rest).
        body = parse(SpeechRequest, _fields(request, input=request.input, stream=False))
        plan = build_speech_job(body, self.runner, self.settings)
        job = plan.job
        result = await self.speech.submit(
            job, key=job.batch_key, timeout=time_remaining(context), cost=self.runner.cost(job)
        )
        audio = await asyncio.to_thread(encode, result.samples, result.sample_rate, plan.fmt)
        TIME_TO_FIRST_AUDIO.labels("grpc", "whole").observe(time.perf_counter() - received)
        return pb.SynthesizeResponse(
            audio=audio.data,
            media_type=audio.media_type,
            sample_rate=audio.sample_rate,
            duration_seconds=result.duration,
        )

    async def SynthesizeStream(self, request: pb.SynthesizeRequest, context):
        received = time.perf_counter()
        body = parse(SpeechRequest, _fields(request, input=request.input, stream=True))
        plan = build_speech_job(body, self.runner, self.settings)
        job, sample_rate = plan.job, self.runner.sample_rate
        encoder = StreamEncoder(plan.fmt, sample_rate)
        events = self.speech.stream(
            job, key=job.batch_key, timeout=time_remaining(context), cost=self.runner.cost(job)
        )
        async for event in events:
            if isinstance(event, Done):
                return
            if isinstance(event, SentenceAudio):
                if event.index == 0:
                    TIME_TO_FIRST_AUDIO.labels("grpc", "stream").observe(time.perf_counter() - received)
                yield pb.AudioChunk(
                    audio=encoder.piece(event.samples, last=event.index == len(job.sentences) - 1),
                    sentence_index=event.index,
                    text=event.text,
                    duration_seconds=event.samples.size / sample_rate,
                    media_type=encoder.media_type,
                    sample_rate=encoder.sample_rate,
                )

    async def Convert(self, request: pb.ConvertRequest, context) -> pb.ConvertResponse:
        fields = _fields(request)
        fields.pop("audio", None)
        fields.pop("filename", None)
        options = parse(ConversionRequest, fields)
        job, fmt = await asyncio.to_thread(
            build_conversion_job, options, request.audio, request.filename or None, self.runner, self.settings
        )
        result = await self.conversion.submit(
            job, key=job.batch_key, timeout=time_remaining(context), cost=self.runner.cost(job),
            nbytes=job.samples.nbytes,
        )
        audio = await asyncio.to_thread(encode, result.samples, result.sample_rate, fmt)
        return pb.ConvertResponse(
            audio=audio.data,
            media_type=audio.media_type,
            sample_rate=audio.sample_rate,
            duration_seconds=result.duration,
        )

    async def ListVoices(self, request: pb.ListVoicesRequest, context) -> pb.ListVoicesResponse:
        voices = self.runner.voices
        return pb.ListVoicesResponse(
            voices=voices.names(), default_voice=voices.default, aliases=voices.aliases
        )
