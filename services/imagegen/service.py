"""Assembles the image generation service for the kit: runner, batcher, routes, servicer, OIP model."""

from protos import imagegen_pb2_grpc as pb_grpc
from services.kit.service import GrpcServicer, Service

from .grpc_servicer import SERVICE_NAME, ImageGenerationServicer
from .oip import create_oip_model
from .openai_params import DALL_E_MODELS, GPT_IMAGE_MODELS
from .rest import create_router
from .runner import PIPELINES, ImageGenRunner, scheduler_names
from .settings import ImageGenSettings


def create_service(settings: ImageGenSettings | None = None) -> Service:
    settings = settings or ImageGenSettings()
    runner = ImageGenRunner(settings)
    service = Service(name="imagegen", settings=settings, runner=runner)
    batcher = service.batcher("generate", runner.predict_batch)
    service.router = create_router(runner, batcher, settings)
    service.grpc.append(
        GrpcServicer(
            pb_grpc.add_ImageGenerationServicer_to_server,
            ImageGenerationServicer(runner, batcher, settings),
            SERVICE_NAME,
        )
    )
    service.oip.append(create_oip_model(runner, batcher, settings))
    service.models = lambda: [
        {
            "id": runner.model_name,
            "tasks": list(PIPELINES),
            "schedulers": scheduler_names(),
            "default_size": "{}x{}".format(*runner.native_size) if runner.pipelines else None,
            "safety_checker": runner.safety_checker_active if runner.pipelines else None,
            # OpenAI model names this model answers to (openai_params says what each changes).
            "aliases": [*DALL_E_MODELS, *GPT_IMAGE_MODELS],
        }
    ]
    return service
