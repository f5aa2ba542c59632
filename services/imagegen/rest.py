"""REST routes, OpenAI-compatible: POST /v1/images/generations and POST /v1/images/edits.

Both answer JSON, or with `"stream": true` server-sent events: `<kind>.progress` after every
denoising step, `<kind>.partial_image` previews when `partial_images` asks for them, then one
`<kind>.completed` per image (kind is image_generation or image_edit, as in OpenAI's streams).
"""

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from PIL import Image
from starlette.datastructures import UploadFile

from services.kit.batcher import Done, DynamicBatcher
from services.kit.errors import InvalidArgument, ServiceError, UnsupportedMediaType
from services.kit.validation import parse

from .images import decode_image, encode_image, mask_from
from .runner import GeneratedImage, ImageGenRunner, ImageJob, Preview, Progress
from .schemas import (
    ImageData,
    ImageEditRequest,
    ImageGenerationRequest,
    ImagesResponse,
    build_job,
    check_model,
    parse_size,
)
from .settings import ImageGenSettings

log = logging.getLogger(__name__)

EDIT_FILES = ("image", "mask")


def check_openai_fields(body: ImageGenerationRequest, runner: ImageGenRunner) -> None:
    check_model(body.model, runner)
    if body.response_format == "url":
        raise InvalidArgument(
            "response_format: 'url' is not supported (this server stores no images); use b64_json, the default",
            field="response_format",
        )


def b64_image(image: Image.Image, body: ImageGenerationRequest) -> str:
    return base64.b64encode(encode_image(image, body.output_format, body.output_compression)).decode("ascii")


def build_response(
    images: list[GeneratedImage], body: ImageGenerationRequest, job: ImageJob, model: str
) -> ImagesResponse:
    return ImagesResponse(
        created=int(time.time()),
        data=[
            ImageData(b64_json=b64_image(i.image, body), seed=i.seed, nsfw_content_detected=i.nsfw)
            for i in images
        ],
        output_format=body.output_format,
        size=f"{job.width}x{job.height}",
        model=model,
    )


def sse(event_type: str, **data) -> str:
    payload = json.dumps({"type": event_type, **data}, separators=(",", ":"))
    return f"event: {event_type}\ndata: {payload}\n\n"


def create_router(runner: ImageGenRunner, batcher: DynamicBatcher, settings: ImageGenSettings) -> APIRouter:
    router = APIRouter(tags=["images"])

    async def answer(job: ImageJob, body: ImageGenerationRequest, request: Request, kind: str):
        if body.stream:
            # Refuse here while a proper status code is still possible; the stream reports later errors.
            batcher.admit(job.cost)
            return StreamingResponse(
                stream_events(job, body, request, kind),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        images = await batcher.submit(job, key=job.batch_key, disconnected=request.is_disconnected, cost=job.cost)
        return await asyncio.to_thread(build_response, images, body, job, runner.model_name)

    async def stream_events(
        job: ImageJob, body: ImageGenerationRequest, request: Request, kind: str
    ) -> AsyncIterator[str]:
        image_fields = {"output_format": body.output_format, "background": "opaque"}
        try:
            async for event in batcher.stream(
                job, key=job.batch_key, disconnected=request.is_disconnected, cost=job.cost
            ):
                now = int(time.time())
                if isinstance(event, Progress):
                    yield sse(
                        f"{kind}.progress", step=event.step, total_steps=event.total_steps, created_at=now
                    )
                elif isinstance(event, Preview):
                    for index, preview in enumerate(event.images):
                        yield sse(
                            f"{kind}.partial_image",
                            b64_json=b64_image(preview, body),
                            partial_image_index=event.index,
                            image_index=index,
                            step=event.step,
                            total_steps=event.total_steps,
                            size=f"{preview.width}x{preview.height}",
                            created_at=now,
                            **image_fields,
                        )
                elif isinstance(event, Done):
                    for index, image in enumerate(event.result):
                        yield sse(
                            f"{kind}.completed",
                            b64_json=await asyncio.to_thread(b64_image, image.image, body),
                            image_index=index,
                            seed=image.seed,
                            nsfw_content_detected=image.nsfw,
                            size=f"{job.width}x{job.height}",
                            created_at=now,
                            **image_fields,
                        )
        except ServiceError as exc:
            yield sse("error", **exc.body())
        except Exception as exc:
            log.exception("image stream failed")
            error = {
                "code": "internal",
                "message": f"internal error: {type(exc).__name__}",
                "type": "internal",
            }
            yield sse("error", error=error)

    @router.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
    async def generations(body: ImageGenerationRequest, request: Request):
        check_openai_fields(body, runner)
        job = build_job(body, runner, size=parse_size(body.size), size_field="size", streaming=body.stream)
        return await answer(job, body, request, "image_generation")

    @router.post("/v1/images/edits", response_model=ImagesResponse, response_model_exclude_none=True)
    async def edits(request: Request):
        """multipart/form-data: `image` (PNG/JPEG/WebP), optional `mask`, and the generation fields.

        With a mask it inpaints (transparent mask pixels, or white ones in an opaque mask, are
        redrawn); without one it runs image-to-image. `size` resizes the source; by default the
        output keeps the source's size, scaled down into the pixel limit and to multiples of 8.
        """
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UnsupportedMediaType("send multipart/form-data with an image file (and optionally a mask)")
        async with request.form(max_files=len(EDIT_FILES) + 1, max_fields=64) as form:
            fields, uploads = {}, {}
            for key, value in form.multi_items():
                name = key.removesuffix("[]")  # the OpenAI SDK sends image[] for lists
                if isinstance(value, UploadFile):
                    if name not in EDIT_FILES:
                        raise InvalidArgument(
                            f"{name}: unexpected file; send {' and '.join(EDIT_FILES)}", field=name
                        )
                    if name in uploads:
                        raise InvalidArgument(f"{name}: send exactly one file", field=name)
                    uploads[name] = await value.read()
                else:
                    fields[name] = value
        body = parse(ImageEditRequest, fields)
        check_openai_fields(body, runner)
        if "image" not in uploads:
            raise InvalidArgument(
                "image: upload the image to edit as a file field named image", field="image"
            )

        def prepare() -> ImageJob:
            limit = settings.max_input_pixels
            image = decode_image(uploads["image"], field="image", max_pixels=limit)
            mask = (
                mask_from(decode_image(uploads["mask"], field="mask", max_pixels=limit))
                if "mask" in uploads
                else None
            )
            return build_job(
                body,
                runner,
                size=parse_size(body.size),
                size_field="size",
                streaming=body.stream,
                strength=body.strength,
                image=image,
                mask=mask,
            )

        job = await asyncio.to_thread(prepare)
        return await answer(job, body, request, "image_edit")

    return router
