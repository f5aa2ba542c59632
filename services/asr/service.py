"""Assembles the ASR service for the kit: runner, batcher, routes, servicer."""

from protos import asr_pb2_grpc as pb_grpc
from services.kit.service import GrpcServicer, Service

from .grpc_servicer import SERVICE_NAME, SpeechRecognitionServicer
from .rest import create_router
from .runner import AsrRunner
from .settings import AsrSettings


def create_service(settings: AsrSettings | None = None) -> Service:
    settings = settings or AsrSettings()
    runner = AsrRunner(settings)
    service = Service(name="asr", settings=settings, runner=runner)
    batcher = service.batcher("transcribe", runner.predict_batch)
    runner.queued = lambda: batcher.queue_depth
    service.router = create_router(runner, batcher, settings)
    service.grpc.append(
        GrpcServicer(
            pb_grpc.add_SpeechRecognitionServicer_to_server,
            SpeechRecognitionServicer(runner, batcher, settings),
            SERVICE_NAME,
        )
    )
    service.models = lambda: [
        {
            "id": runner.model_id,
            "task": "automatic-speech-recognition",
            "assistant": settings.assistant_model or None,
        }
    ]
    return service
