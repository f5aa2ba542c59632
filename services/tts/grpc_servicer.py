"""gRPC servicer: the same validation, batchers and encoding as REST, over tts.v1.TextToSpeech."""

import asyncio
import time

from google.protobuf.json_format import MessageToDict

from services.kit.audio import encode_audio
from services.kit.batcher import Done, DynamicBatcher
from services.kit.grpc_server import time_remaining
from services.kit.validation import parse

from . import tts_pb2 as pb
from . import tts_pb2_grpc as pb_grpc
from .encoding import MEDIA_TYPES, stream_chunk
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
        body = parse(SpeechRequest, _fields(request, input=request.input))
        job, fmt = build_speech_job(body, self.runner, self.settings)
        result = await self.speech.submit(
            job, key=job.batch_key, timeout=time_remaining(context), cost=self.runner.cost(job)
        )
        audio, media_type = await asyncio.to_thread(encode_audio, result.samples, result.sample_rate, fmt)
        TIME_TO_FIRST_AUDIO.labels("grpc", "whole").observe(time.perf_counter() - received)
        return pb.SynthesizeResponse(
            audio=audio,
            media_type=media_type,
            sample_rate=result.sample_rate,
            duration_seconds=result.duration,
        )

    async def SynthesizeStream(self, request: pb.SynthesizeRequest, context):
        received = time.perf_counter()
        body = parse(SpeechRequest, _fields(request, input=request.input, stream=True))
        job, fmt = build_speech_job(body, self.runner, self.settings)
        sample_rate = self.runner.sample_rate
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
                    audio=stream_chunk(event.samples, sample_rate, fmt, first=event.index == 0),
                    sentence_index=event.index,
                    text=event.text,
                    duration_seconds=event.samples.size / sample_rate,
                    media_type=MEDIA_TYPES[fmt],
                    sample_rate=sample_rate,
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
            job, key=job.batch_key, timeout=time_remaining(context), cost=self.runner.cost(job)
        )
        audio, media_type = await asyncio.to_thread(encode_audio, result.samples, result.sample_rate, fmt)
        return pb.ConvertResponse(
            audio=audio,
            media_type=media_type,
            sample_rate=result.sample_rate,
            duration_seconds=result.duration,
        )

    async def ListVoices(self, request: pb.ListVoicesRequest, context) -> pb.ListVoicesResponse:
        voices = self.runner.voices
        return pb.ListVoicesResponse(voices=voices.names(), default_voice=voices.default)
