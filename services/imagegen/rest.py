"""REST routes, OpenAI-compatible: POST /v1/images/generations, /v1/images/edits (multipart or JSON),
/v1/images/variations, and GET /v1/images/files/{id} for the links `response_format="url"` answers.

Generations and edits answer JSON, or with `"stream": true` server-sent events: `<kind>.progress` after
every denoising step, `<kind>.partial_image` previews when `partial_images` asks for them, then one
`<kind>.completed` per image (kind is image_generation or image_edit, as in OpenAI's streams).
Every answer carries `x-modelserve-image-size` (the pixels made) and, when a parameter had no effect,
`x-modelserve-ignored` naming it (openai_params lists which parameters do what).
"""

import asyncio
import base64
import copy
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.datastructures import UploadFile

from services.kit.batcher import Done, DynamicBatcher
from services.kit.errors import InvalidArgument, NotFound, ServiceError, UnsupportedMediaType
from services.kit.json_limits import parses_as_json
from services.kit.validation import parse

from .files import ImageStore
from .images import decode_image, encode_image, mask_from, media_type, reference_sheet
from .inputs import load_reference
from .openai_params import ModelProfile, OpenAIPlan, plan_request
from .runner import TEXT_TO_IMAGE, GeneratedImage, ImageGenRunner, ImageJob, Preview, Progress
from .schemas import (
    MAX_OPENAI_EDIT_IMAGES,
    GenerationOptions,
    ImageEditJsonRequest,
    ImageEditRequest,
    ImageGenerationRequest,
    ImagesResponse,
    ImageVariationRequest,
    build_job,
)
from .settings import ImageGenSettings

log = logging.getLogger(__name__)

FILES_PATH = "/v1/images/files"
TRUNCATED_HEADER = "x-modelserve-truncated"
# Variations follow dall-e-2, the only OpenAI model that made them: links unless b64_json is asked for.
VARIATION_DEFAULT_MODEL = ModelProfile("dall-e-2", legacy=True)


@dataclass(frozen=True)
class Upload:
    """The images of an edit or variation, as bytes (not decoded yet), each with the field errors name."""

    images: tuple[tuple[str, bytes], ...]
    mask: bytes | None = None

    @property
    def nbytes(self) -> int:
        return sum(len(data) for _, data in self.images) + len(self.mask or b"")


class PromptTokens:
    """Counts prompt tokens with a private copy of the pipeline's tokenizer (a fast tokenizer must not be
    shared with the model thread), for `usage` and to report prompts the text encoder truncates."""

    def __init__(self, runner: ImageGenRunner):
        self.runner = runner
        self._tokenizer = None
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = copy.deepcopy(self.runner.pipelines[TEXT_TO_IMAGE].tokenizer)
            return len(self._tokenizer(text, truncation=False, verbose=False).input_ids)

    @property
    def limit(self) -> int:
        return self.runner.pipelines[TEXT_TO_IMAGE].tokenizer.model_max_length


def sse(event_type: str, **data) -> str:
    payload = json.dumps({"type": event_type, **data}, separators=(",", ":"))
    return f"event: {event_type}\ndata: {payload}\n\n"


def usage(prompt_tokens: int) -> dict:
    """OpenAI's usage shape: the prompt's text tokens; Stable Diffusion makes images from no tokens."""
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0},
        "output_tokens": 0,
        "total_tokens": prompt_tokens,
    }


def create_router(runner: ImageGenRunner, batcher: DynamicBatcher, settings: ImageGenSettings) -> APIRouter:
    router = APIRouter(tags=["images"])
    store = ImageStore(
        ttl_s=settings.url_ttl_s,
        max_images=settings.url_store_max_images,
        max_bytes=settings.url_store_max_bytes,
    )
    tokens = PromptTokens(runner)

    def encoded(image: Image.Image, body: GenerationOptions) -> bytes:
        return encode_image(image, body.output_format, body.output_compression)

    def b64(image: Image.Image, body: GenerationOptions) -> str:
        return base64.b64encode(encoded(image, body)).decode("ascii")

    def build_response(
        images: list[GeneratedImage],
        body: ImageGenerationRequest,
        plan: OpenAIPlan,
        job: ImageJob,
        base_url: str,
        prompt_tokens: int,
    ) -> dict:
        data = []
        for generated in images:
            item = {"seed": generated.seed}
            if plan.response_format == "url":
                image_id = store.put(encoded(generated.image, body), media_type(body.output_format))
                item["url"] = f"{base_url}{FILES_PATH}/{image_id}"
            else:
                item["b64_json"] = b64(generated.image, body)
            if generated.nsfw is not None:
                item["nsfw_content_detected"] = generated.nsfw
            data.append(item)
        response = {"created": int(time.time()), "data": data, "model": runner.model_name}
        if not plan.profile.legacy:  # OpenAI's DALL-E answers carry none of these
            response.update(
                output_format=body.output_format,
                size=f"{job.width}x{job.height}",
                background="opaque",
                usage=usage(prompt_tokens),
            )
            if plan.quality:
                response["quality"] = plan.quality
        if plan.safety_identifier:
            response["safety_identifier"] = plan.safety_identifier
        return response

    def image_fields(body: ImageGenerationRequest, plan: OpenAIPlan) -> dict:
        fields = {
            "output_format": body.output_format,
            "background": "opaque",
            "quality": plan.quality or "auto",
        }
        if plan.safety_identifier:
            fields["safety_identifier"] = plan.safety_identifier
        return fields

    async def answer(
        prepare, body: ImageGenerationRequest, plan: OpenAIPlan, request: Request, kind: str, nbytes: int = 0
    ) -> Response:
        """`prepare` builds the job in a worker thread (it may decode images); then run or stream it."""

        def prepared() -> tuple[ImageJob, int, dict]:
            job = prepare()
            counts = {"prompt": tokens.count(body.prompt)}
            if body.negative_prompt:
                counts["negative_prompt"] = tokens.count(body.negative_prompt)
            headers = plan.headers(job.width, job.height)
            truncated = [name for name, count in counts.items() if count > tokens.limit]
            if truncated:  # the text encoder reads the first `limit` tokens only
                headers[TRUNCATED_HEADER] = ", ".join(
                    f"{name} (beyond {tokens.limit} tokens)" for name in truncated
                )
            return job, counts["prompt"], headers

        job, prompt_tokens, headers = await asyncio.to_thread(prepared)
        if body.stream:
            # Refuse here while a proper status code is still possible; the stream reports later errors.
            batcher.admit(job.cost, nbytes)
            return StreamingResponse(
                stream_events(job, body, plan, request, kind, prompt_tokens),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
            )
        images = await batcher.submit(
            job, key=job.batch_key, disconnected=request.is_disconnected, cost=job.cost, nbytes=nbytes
        )
        base_url = (settings.public_base_url or str(request.base_url)).rstrip("/")
        payload = await asyncio.to_thread(build_response, images, body, plan, job, base_url, prompt_tokens)
        return JSONResponse(payload, headers=headers)

    async def stream_events(
        job: ImageJob,
        body: ImageGenerationRequest,
        plan: OpenAIPlan,
        request: Request,
        kind: str,
        prompt_tokens: int,
    ) -> AsyncIterator[str]:
        fields = image_fields(body, plan)
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
                            b64_json=b64(preview, body),
                            partial_image_index=event.index,
                            image_index=index,
                            step=event.step,
                            total_steps=event.total_steps,
                            size=f"{preview.width}x{preview.height}",
                            created_at=now,
                            **fields,
                        )
                elif isinstance(event, Done):
                    for index, image in enumerate(event.result):
                        yield sse(
                            f"{kind}.completed",
                            b64_json=await asyncio.to_thread(b64, image.image, body),
                            image_index=index,
                            seed=image.seed,
                            nsfw_content_detected=image.nsfw,
                            size=f"{job.width}x{job.height}",
                            created_at=now,
                            usage=usage(prompt_tokens),
                            **fields,
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

    def edit_job(
        body: ImageEditRequest,
        plan: OpenAIPlan,
        upload: Upload,
        strength: float | None,
        prompt_required: bool = True,
    ):
        def prepare() -> ImageJob:
            limit = settings.max_input_pixels
            if len(upload.images) == 1:
                field, data = upload.images[0]
                image = decode_image(data, field=field, max_pixels=limit)
            else:
                image = reference_sheet(upload.images, max_pixels=limit)
            mask = (
                None
                if upload.mask is None
                else mask_from(decode_image(upload.mask, field="mask", max_pixels=limit))
            )
            return build_job(
                body.model_copy(update=plan.option_updates()),
                runner,
                size=plan.size,
                size_field="size",
                streaming=body.stream,
                strength=strength,
                image=image,
                mask=mask,
                prompt_required=prompt_required,
            )

        return prepare

    @router.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
    async def generations(body: ImageGenerationRequest, request: Request):
        plan = plan_request(body, runner)

        def prepare() -> ImageJob:
            options = body.model_copy(update=plan.option_updates())
            return build_job(options, runner, size=plan.size, size_field="size", streaming=body.stream)

        return await answer(prepare, body, plan, request, "image_generation")

    @router.post("/v1/images/edits", response_model=ImagesResponse, response_model_exclude_none=True)
    async def edits(request: Request):
        """multipart/form-data: `image` (PNG/JPEG/WebP; up to 16 as `image[]`), optional `mask`, and the
        generation fields; or JSON with `images: [{"image_url": "data:image/png;base64,..."}]` and optional
        `mask: {"image_url": ...}`. Several images are redrawn together, side by side on one sheet.

        With a mask it inpaints (transparent mask pixels, or white ones in an opaque mask, are
        redrawn); without one it runs image-to-image. `size` resizes the source; by default the
        output keeps the source's size, scaled down into the pixel limit and to multiples of 8.
        """
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            fields, upload = await read_form(request, with_mask=True)
            body = parse(ImageEditRequest, fields)
        elif parses_as_json(content_type.encode("latin-1")):
            body, upload = await read_json_edit(request)
        else:
            raise UnsupportedMediaType(
                "send multipart/form-data with an image file (and optionally a mask), or JSON with "
                'images: [{"image_url": "data:image/png;base64,..."}]'
            )
        plan = plan_request(body, runner, not_applicable=("input_fidelity",))
        prepare = edit_job(body, plan, upload, body.strength)
        return await answer(prepare, body, plan, request, "image_edit", nbytes=upload.nbytes)

    @router.post("/v1/images/variations", response_model=ImagesResponse, response_model_exclude_none=True)
    async def variations(request: Request):
        """multipart/form-data: `image` plus OpenAI's n, size, response_format, model, user (and the extension
        fields): image-to-image with no prompt, redrawing IMAGEGEN_VARIATION_STRENGTH of it by default.
        Without a model it answers as dall-e-2 did: links unless b64_json is asked for."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UnsupportedMediaType("send multipart/form-data with the image as a file field named image")
        fields, upload = await read_form(request, with_mask=False)
        body = parse(ImageVariationRequest, fields)
        plan = plan_request(
            body, runner, default_model=VARIATION_DEFAULT_MODEL, not_applicable=("input_fidelity",)
        )
        strength = settings.variation_strength if body.strength is None else body.strength
        prepare = edit_job(body, plan, upload, strength, prompt_required=False)
        return await answer(prepare, body, plan, request, "image_variation", nbytes=upload.nbytes)

    @router.get(
        FILES_PATH + "/{image_id}", response_class=Response, responses={200: {"content": {"image/png": {}}}}
    )
    async def image_file(image_id: str = Path(max_length=64)):
        """An image made with `response_format="url"`, until IMAGEGEN_URL_TTL_S has passed (or newer images
        have pushed it out of the bounded store)."""
        stored = store.get(image_id)
        if stored is None:
            raise NotFound("image not found: unknown id, expired, or evicted", field="image_id")
        cache = f"private, max-age={int(store.remaining_s(stored))}"
        return Response(stored.data, media_type=stored.media_type, headers={"Cache-Control": cache})

    async def read_json_edit(request: Request) -> tuple[ImageEditJsonRequest, Upload]:
        raw = await request.body()
        try:
            data = await asyncio.to_thread(json.loads, raw)  # megabytes of data: URLs
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
        body = parse(ImageEditJsonRequest, data)
        check_image_count(len(body.images), "images", MAX_OPENAI_EDIT_IMAGES, body.mask is not None)
        limits = dict(
            allowed_hosts=settings.remote_image_hosts,
            max_bytes=settings.max_body_bytes,
            timeout_s=settings.remote_image_timeout_s,
        )
        images = []
        for index, reference in enumerate(body.images):
            name = f"images[{index}]"
            images.append((name, await load_reference(reference, name, **limits)))
        mask = None if body.mask is None else await load_reference(body.mask, "mask", **limits)
        return body, Upload(tuple(images), mask)

    async def read_form(request: Request, *, with_mask: bool) -> tuple[dict, Upload]:
        """The form's fields and its image (and mask) bytes; OpenAI's `image[]` and `svg[model]` spellings
        are read as `image` and `svg`."""
        file_fields = ("image", "mask") if with_mask else ("image",)
        async with request.form(max_files=MAX_OPENAI_EDIT_IMAGES + 2, max_fields=64) as form:
            fields, images, masks = {}, [], []
            for key, value in form.multi_items():
                name = key.split("[", 1)[0]
                if not isinstance(value, UploadFile):
                    fields[name] = value
                elif name == "image":
                    images.append(value)
                elif name == "mask" and with_mask:
                    masks.append(value)
                elif name == "markup":
                    raise InvalidArgument(
                        "markup: not supported; send a mask (its transparent pixels are redrawn)",
                        field="markup",
                    )
                else:
                    raise InvalidArgument(
                        f"{name}: unexpected file; send {' and '.join(file_fields)}", field=name
                    )
            if not images:
                raise InvalidArgument("image: upload the image as a file field named image", field="image")
            check_image_count(len(images), "image", MAX_OPENAI_EDIT_IMAGES if with_mask else 1, bool(masks))
            if len(masks) > 1:
                raise InvalidArgument("mask: send exactly one mask", field="mask")
            names = ["image"] if len(images) == 1 else [f"image[{index}]" for index in range(len(images))]
            data = tuple([(name, await image.read()) for name, image in zip(names, images, strict=True)])
            mask = await masks[0].read() if masks else None
        return fields, Upload(data, mask)

    return router


def check_image_count(count: int, field: str, limit: int, masked: bool) -> None:
    """Edits take up to OpenAI's 16 images, drawn together on one sheet; a variation redraws one image."""
    if count > limit:
        taken = "one image" if limit == 1 else f"at most {limit} images (drawn together on one sheet)"
        raise InvalidArgument(f"{field}: this endpoint takes {taken}, got {count}", field=field)
    if count > 1 and masked:
        raise InvalidArgument(
            f"mask: a mask applies to one image; send one {field} with it, or {count} without a mask",
            field="mask",
        )
