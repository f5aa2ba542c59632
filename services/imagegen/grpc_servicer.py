"""gRPC servicer: the same validation, batcher and events as REST, over imagegen.v1.ImageGeneration."""

import asyncio
from collections.abc import AsyncIterator

from google.protobuf.json_format import MessageToDict

from protos import imagegen_pb2 as pb
from protos import imagegen_pb2_grpc as pb_grpc
from services.kit.batcher import Done, DynamicBatcher
from services.kit.grpc_server import time_remaining
from services.kit.validation import parse

from .images import decode_image, encode_image, mask_from, media_type
from .runner import GeneratedImage, ImageGenRunner, ImageJob, Preview, Progress
from .schemas import GenerateFields, build_job
from .settings import ImageGenSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageGeneration"].full_name


class ImageGenerationServicer(pb_grpc.ImageGenerationServicer):
    def __init__(self, runner: ImageGenRunner, batcher: DynamicBatcher, settings: ImageGenSettings):
        self.runner = runner
        self.batcher = batcher
        self.settings = settings

    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        body, job = await self._prepare(request, streaming=False)
        images = await self.batcher.submit(job, key=job.batch_key, timeout=time_remaining(context), cost=job.cost)
        return await asyncio.to_thread(self._response, images, body, job)

    async def GenerateStream(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateEvent]:
        body, job = await self._prepare(request, streaming=True)
        async for event in self.batcher.stream(job, key=job.batch_key, timeout=time_remaining(context), cost=job.cost):
            if isinstance(event, Progress):
                yield pb.GenerateEvent(progress=pb.Progress(step=event.step, total_steps=event.total_steps))
            elif isinstance(event, Preview):
                previews = [self._image(GeneratedImage(image, 0, None), body) for image in event.images]
                yield pb.GenerateEvent(
                    partial_image=pb.PartialImage(
                        partial_image_index=event.index,
                        step=event.step,
                        total_steps=event.total_steps,
                        previews=previews,
                    )
                )
            elif isinstance(event, Done):
                yield pb.GenerateEvent(
                    result=await asyncio.to_thread(self._response, event.result, body, job)
                )

    async def _prepare(self, request: pb.GenerateRequest, streaming: bool) -> tuple[GenerateFields, ImageJob]:
        fields = MessageToDict(request, preserving_proto_field_name=True)
        fields.pop("image", None), fields.pop("mask", None)
        body = parse(GenerateFields, fields)
        size = body.size

        def prepare() -> ImageJob:
            limit = self.settings.max_input_pixels
            image = decode_image(request.image, field="image", max_pixels=limit) if request.image else None
            mask = (
                mask_from(decode_image(request.mask, field="mask", max_pixels=limit))
                if request.mask
                else None
            )
            return build_job(
                body,
                self.runner,
                size=size,
                size_field="width",
                streaming=streaming,
                strength=body.strength,
                image=image,
                mask=mask,
            )

        return body, await asyncio.to_thread(prepare)

    @staticmethod
    def _image(image: GeneratedImage, body: GenerateFields) -> pb.Image:
        return pb.Image(
            data=encode_image(image.image, body.output_format, body.output_compression),
            media_type=media_type(body.output_format),
            seed=image.seed,
            nsfw_content_detected=image.nsfw,
        )

    def _response(
        self, images: list[GeneratedImage], body: GenerateFields, job: ImageJob
    ) -> pb.GenerateResponse:
        return pb.GenerateResponse(
            images=[self._image(image, body) for image in images],
            model=self.runner.model_name,
            width=job.width,
            height=job.height,
            task=job.task,
        )
