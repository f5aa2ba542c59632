"""The image generation service for the kit: one operation, `generate`, bound to REST (OpenAI's images API,
its readers and renderer in rest), gRPC (imagegen.v1.ImageGeneration) and the Open Inference Protocol (in oip)."""

import asyncio

from fastapi import APIRouter

from protos import imagegen_pb2 as pb
from protos import imagegen_pb2_grpc as pb_grpc
from services.kit.batcher import Done
from services.kit.decoding import run_decoding
from services.kit.operations import Call, Operation, Upload, message_fields
from services.kit.service import GrpcServicer, Service

from .files import ImageStore
from .images import encode_image, media_type
from .oip import oip_model
from .openai_params import DALL_E_MODELS, GPT_IMAGE_MODELS, PromptTokens
from .rest import (
    EDITS_DESCRIPTION,
    VARIATIONS_DESCRIPTION,
    add_image_files_route,
    read_edit,
    read_generation,
    read_variation,
    rest_answer,
)
from .runner import PIPELINES, GeneratedImage, ImageGenRunner, Preview, Progress, scheduler_names
from .schemas import (
    GenerateInput,
    Generation,
    ImageGenerationRequest,
    ImagesResponse,
    check_before_decoding,
    plan_generation,
)
from .settings import ImageGenSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageGeneration"].full_name


def create_service(settings: ImageGenSettings | None = None) -> Service:
    settings = settings or ImageGenSettings()
    runner = ImageGenRunner(settings)
    service = Service(name="imagegen", settings=settings, runner=runner)
    tokens = PromptTokens(runner)

    async def prepare(body: GenerateInput) -> Generation:
        if not body.has_source:
            return await asyncio.to_thread(plan_generation, body, runner, tokens)
        if body.encoded_files:  # a request refused for its parameters waits for no decoding thread
            check_before_decoding(body, runner)
        # Decodes and resizes the sources on the decoding threads, off the event loop.
        return await run_decoding(plan_generation, body, runner, tokens)

    generate = Operation(
        "generate", GenerateInput, None, service.batcher("generate", runner.predict_batch), prepare
    )

    service.router = APIRouter(tags=["images"])
    store = ImageStore(
        ttl_s=settings.url_ttl_s,
        max_images=settings.url_store_max_images,
        max_bytes=settings.url_store_max_bytes,
    )
    answered = dict(
        answer=rest_answer(runner, settings, store),
        response_model=ImagesResponse,
        response_model_exclude_none=True,
    )
    generate.add_route(
        service.router,
        "/v1/images/generations",
        name="generations",
        body=ImageGenerationRequest,
        read=read_generation(runner),
        **answered,
    )
    for route, read, description in (
        ("edits", read_edit(runner, settings), EDITS_DESCRIPTION),
        ("variations", read_variation(runner, settings), VARIATIONS_DESCRIPTION),
    ):
        path = f"/v1/images/{route}"
        generate.add_route(service.router, path, name=route, read=read, description=description, **answered)
    add_image_files_route(service.router, store)

    service.grpc.append(grpc_servicer(generate, runner))
    service.oip.append(oip_model(generate, runner, settings))
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


def grpc_servicer(generate: Operation, runner: ImageGenRunner) -> GrpcServicer:
    def image(generated: GeneratedImage, generation: Generation) -> pb.Image:
        return pb.Image(
            data=encode_image(generated.image, generation.output_format, generation.output_compression),
            media_type=media_type(generation.output_format),
            seed=generated.seed,
            nsfw_content_detected=generated.nsfw,
        )

    def response(images: list[GeneratedImage], generation: Generation) -> pb.GenerateResponse:
        job = generation.job
        return pb.GenerateResponse(
            images=[image(generated, generation) for generated in images],
            model=runner.model_name,
            width=job.width,
            height=job.height,
            task=job.task,
        )

    async def generated(call: Call[Generation]) -> pb.GenerateResponse:
        return await asyncio.to_thread(response, await call.result(), call.plan)

    async def generated_by_step(call: Call[Generation]):
        generation = call.plan
        async for event in call.events():
            if isinstance(event, Progress):
                yield pb.GenerateEvent(progress=pb.Progress(step=event.step, total_steps=event.total_steps))
            elif isinstance(event, Preview):
                previews = [image(GeneratedImage(preview, 0, None), generation) for preview in event.images]
                yield pb.GenerateEvent(
                    partial_image=pb.PartialImage(
                        partial_image_index=event.index,
                        step=event.step,
                        total_steps=event.total_steps,
                        previews=previews,
                    )
                )
            elif isinstance(event, Done):
                yield pb.GenerateEvent(result=await asyncio.to_thread(response, event.result, generation))

    def fields(streamed: bool):
        """The message's set fields; proto3's empty bytes mean no image (or mask)."""

        def to_fields(message: pb.GenerateRequest) -> dict:
            sources = {
                name: Upload(data=getattr(message, name))
                for name in ("image", "mask")
                if getattr(message, name)
            }
            return {**message_fields(message), **sources, "stream": streamed}

        return to_fields

    servicer = pb_grpc.ImageGenerationServicer()
    servicer.Generate = generate.grpc_method(answer=generated, to_fields=fields(False))
    servicer.GenerateStream = generate.grpc_stream(generated_by_step, to_fields=fields(True))
    return GrpcServicer(pb_grpc.add_ImageGenerationServicer_to_server, servicer, SERVICE_NAME)
