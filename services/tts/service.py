"""The TTS service for the kit: speech and voice conversion, each one operation bound to REST, gRPC
(tts.v1.TextToSpeech) and the Open Inference Protocol."""

import time

from fastapi import APIRouter
from fastapi.responses import Response

from protos import tts_pb2 as pb
from protos import tts_pb2_grpc as pb_grpc
from services.kit.decoding import run_decoding
from services.kit.operations import Call, Operation, Upload, message_fields
from services.kit.service import GrpcServicer, Service

from . import oip, rest
from .answers import encoded, sentence_pieces
from .encoding import StreamEncoder
from .metrics import TIME_TO_FIRST_AUDIO
from .runner import SpeechRunner, model_name
from .schemas import (
    ConversionPlan,
    ConversionRequest,
    SpeechPlan,
    SpeechRequest,
    plan_conversion,
    plan_speech,
)
from .settings import TTSSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TextToSpeech"].full_name


def create_service(settings: TTSSettings | None = None) -> Service:
    settings = settings or TTSSettings()
    runner = SpeechRunner(settings)
    service = Service(name="tts", settings=settings, runner=runner)
    service.models = lambda: [
        {
            "id": model_name(settings.model),
            "task": "text-to-speech",
            "aliases": list(settings.model_aliases),
            "quantization": runner.quantization,
        },
        {"id": model_name(settings.vc_model), "task": "voice-conversion"},
    ]
    speech = Operation(
        "create_speech",
        SpeechRequest,
        None,
        service.batcher("speech", runner.predict_speech, decoder=runner.step_decoder),
        prepare=lambda body: plan_speech(body, runner, settings),
    )
    conversion_batcher = service.batcher(
        "conversion",
        runner.predict_conversion,
        max_request_cost=settings.max_conversion_cost,
        max_batch_cost=settings.max_conversion_batch_cost,
        cost_setting="TTS_MAX_CONVERSION_COST",
    )
    conversion = Operation(
        "convert_voice",
        ConversionRequest,
        None,
        conversion_batcher,
        # Decodes the upload: off the event loop.
        prepare=lambda body: run_decoding(plan_conversion, body, runner, settings),
    )

    # -- REST -----------------------------------------------------------------------------------
    service.router = APIRouter(tags=["tts"])
    speech.add_route(
        service.router,
        "/v1/audio/speech",
        answer=lambda call: rest.rest_speech_answer(call, runner),
        response_class=Response,
    )
    conversion.add_route(
        service.router,
        "/v1/audio/conversions",
        answer=rest.rest_conversion_answer,
        form=True,
        response_class=Response,
    )

    @service.router.get("/v1/voices")
    async def list_voices() -> dict:
        """The installed voices, then each alias with the voice it selects (`alias_of`)."""
        return rest.render_voices(runner.voices)

    # -- gRPC -----------------------------------------------------------------------------------
    async def synthesize(call: Call[SpeechPlan]) -> pb.SynthesizeResponse:
        result, audio = await encoded(call, call.plan.fmt)
        TIME_TO_FIRST_AUDIO.labels("grpc", "whole").observe(time.perf_counter() - call.received)
        return pb.SynthesizeResponse(
            audio=audio.data,
            media_type=audio.media_type,
            sample_rate=audio.sample_rate,
            duration_seconds=result.duration,
        )

    async def synthesize_stream(call: Call[SpeechPlan]):
        encoder = StreamEncoder(call.plan.fmt, runner.sample_rate)
        async for sentence, piece in sentence_pieces(call, encoder, "grpc"):
            yield pb.AudioChunk(
                audio=piece,
                sentence_index=sentence.index,
                text=sentence.text,
                duration_seconds=sentence.samples.size / runner.sample_rate,
                media_type=encoder.media_type,
                sample_rate=encoder.sample_rate,
            )

    async def convert(call: Call[ConversionPlan]) -> pb.ConvertResponse:
        result, audio = await encoded(call, call.plan.fmt)
        return pb.ConvertResponse(
            audio=audio.data,
            media_type=audio.media_type,
            sample_rate=audio.sample_rate,
            duration_seconds=result.duration,
        )

    async def list_grpc_voices(request, context) -> pb.ListVoicesResponse:
        voices = runner.voices
        return pb.ListVoicesResponse(
            voices=voices.names(), default_voice=voices.default, aliases=voices.aliases
        )

    def fields(message, **extra) -> dict:
        """Set fields only, with the REST schemas' names (proto3 cannot tell an empty list or string from unset)."""
        return {name: value for name, value in message_fields(message).items() if value != []} | extra

    def speech_fields(streamed: bool):
        # proto3's empty input counts as sent (and refused as empty); a unary answer has nothing to gain from the
        # streaming plan (first sentence alone, then the rest).
        return lambda message: fields(message, input=message.input, stream=streamed)

    def conversion_fields(message) -> dict:
        upload = Upload(data=message.audio, filename=message.filename or None)
        return {
            name: value
            for name, value in fields(message, file=upload).items()
            if name not in ("audio", "filename")
        }

    servicer = pb_grpc.TextToSpeechServicer()
    servicer.Synthesize = speech.grpc_method(answer=synthesize, to_fields=speech_fields(False))
    servicer.SynthesizeStream = speech.grpc_stream(synthesize_stream, to_fields=speech_fields(True))
    servicer.Convert = conversion.grpc_method(answer=convert, to_fields=conversion_fields)
    servicer.ListVoices = list_grpc_voices
    service.grpc.append(GrpcServicer(pb_grpc.add_TextToSpeechServicer_to_server, servicer, SERVICE_NAME))

    # -- Open Inference Protocol ----------------------------------------------------------------
    service.oip.append(
        speech.oip_model(
            oip.SPEECH_MODEL,
            inputs=oip.SPEECH_INPUTS,
            outputs=oip.SPEECH_OUTPUTS,
            to_fields=oip.oip_speech_fields,
            parameters=oip.SPEECH_PARAMETERS,
            answer=oip.oip_speech_answer,
            stream=lambda call: oip.oip_speech_stream(call, runner.sample_rate),
        )
    )
    service.oip.append(
        conversion.oip_model(
            oip.CONVERSION_MODEL,
            inputs=oip.oip_conversion_inputs(settings.max_body_bytes),
            outputs=oip.AUDIO_OUTPUTS,
            to_fields=oip.oip_conversion_fields,
            parameters=oip.COMMON_PARAMETERS,
            answer=oip.oip_conversion_answer,
        )
    )
    return service
