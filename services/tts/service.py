"""Assembles the TTS service for the kit: runner, batchers, routes, servicer, Open Inference Protocol models."""

from protos import tts_pb2_grpc as pb_grpc
from services.kit.service import GrpcServicer, Service

from .grpc_servicer import SERVICE_NAME, TextToSpeechServicer
from .oip import oip_models
from .rest import create_router
from .runner import SpeechRunner, model_name
from .settings import TTSSettings


def create_service(settings: TTSSettings | None = None) -> Service:
    settings = settings or TTSSettings()
    runner = SpeechRunner(settings)
    service = Service(name="tts", settings=settings, runner=runner)
    speech = service.batcher("speech", runner.predict_speech)
    conversion = service.batcher(
        "conversion",
        runner.predict_conversion,
        max_request_cost=settings.max_conversion_cost,
        max_batch_cost=settings.max_conversion_batch_cost,
        cost_setting="TTS_MAX_CONVERSION_COST",
    )
    service.router = create_router(runner, speech, conversion, settings)
    service.grpc.append(
        GrpcServicer(
            pb_grpc.add_TextToSpeechServicer_to_server,
            TextToSpeechServicer(runner, speech, conversion, settings),
            SERVICE_NAME,
        )
    )
    service.oip.extend(oip_models(runner, speech, conversion, settings))
    service.models = lambda: [
        {"id": model_name(settings.model), "task": "text-to-speech", "aliases": list(settings.model_aliases)},
        {"id": model_name(settings.vc_model), "task": "voice-conversion"},
    ]
    return service
