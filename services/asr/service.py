"""Assembles the ASR service for the kit: runner, batcher, routes, servicer, Open Inference Protocol model."""

from protos import asr_pb2_grpc as pb_grpc
from services.kit.service import GrpcServicer, Service

from .grpc_servicer import SERVICE_NAME, SpeechRecognitionServicer
from .oip import create_oip_model
from .rest import create_router
from .runner import ASRRunner
from .settings import ASRSettings


def create_service(settings: ASRSettings | None = None) -> Service:
    settings = settings or ASRSettings()
    runner = ASRRunner(settings)
    service = Service(name="asr", settings=settings, runner=runner)
    batcher = service.batcher("transcribe", runner.predict_batch)
    service.router = create_router(runner, batcher, settings)
    service.grpc.append(
        GrpcServicer(
            pb_grpc.add_SpeechRecognitionServicer_to_server,
            SpeechRecognitionServicer(runner, batcher, settings),
            SERVICE_NAME,
        )
    )
    service.oip.append(create_oip_model(runner, batcher, settings))
    service.models = lambda: [
        {
            "id": runner.model_id,
            "task": "automatic-speech-recognition",
            "assistant": settings.assistant_model or None,
        }
    ]
    return service
