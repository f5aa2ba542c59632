"""Assembles the translation service for the kit: runner, batcher, routes, servicer."""

from protos import translation_pb2_grpc as pb_grpc
from services.kit.service import GrpcServicer, Service

from .grpc_servicer import SERVICE_NAME, TranslationServicer
from .rest import create_router
from .runner import TranslationRunner
from .settings import TranslationSettings


def create_service(settings: TranslationSettings | None = None) -> Service:
    settings = settings or TranslationSettings()
    runner = TranslationRunner(settings)
    service = Service(name="translation", settings=settings, runner=runner)
    batcher = service.batcher("translate", runner.predict_batch)
    service.router = create_router(runner, batcher, settings)
    service.grpc.append(
        GrpcServicer(pb_grpc.add_TranslationServicer_to_server, TranslationServicer(runner, batcher, settings), SERVICE_NAME)
    )
    service.models = runner.model_infos
    return service
