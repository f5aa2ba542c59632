"""OpenAI's images API on the generate operation: readers of POST /v1/images/generations, /v1/images/edits
(multipart or JSON) and /v1/images/variations into GenerateInput, the renderer of their answers, and
GET /v1/images/files/{id} for the links `response_format="url"` answers.

Generations and edits answer JSON, or with `"stream": true` server-sent events of OpenAI's types only:
`<kind>.partial_image` previews as many as `partial_images` asks for, then one `<kind>.completed` per image
(kind is image_generation or image_edit, as in OpenAI's streams); the extension `"stream_progress": true` adds
`<kind>.progress` after every denoising step. For OpenAI's model names images (previews too) come in one of
the model's sizes, resized to it when made smaller within the pixel limit. Every answer carries
`x-modelserve-image-size` (the pixels made) and, when a parameter had no effect, `x-modelserve-ignored`
naming it (openai_params lists which parameters do what).
"""

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import Field

from services.kit.batcher import Done
from services.kit.errors import InvalidArgument, NotFound, UnsupportedMediaType
from services.kit.json_limits import parses_as_json
from services.kit.operations import Call, FormSpelling, Upload, read_form
from services.kit.streaming import SSE_MEDIA_TYPE, rest_stream, sse_event
from services.kit.validation import parse

from .files import ImageStore
from .images import encode_image, media_type
from .inputs import load_reference
from .openai_params import EDIT, GENERATION, VARIATION, OpenAIAnswer, OpenAIRequest, plan_request
from .runner import GeneratedImage, ImageGenRunner, Preview, Progress
from .schemas import (
    MAX_OPENAI_EDIT_IMAGES,
    GenerateInput,
    Generation,
    GenerationOptions,
    ImageEditJsonRequest,
    ImageEditRequest,
    ImageGenerationRequest,
    ImageVariationRequest,
)
from .settings import ImageGenSettings

FILES_PATH = "/v1/images/files"
EDITS_DESCRIPTION = """multipart/form-data: `image` (PNG/JPEG/WebP; up to 16 as `image[]`), optional `mask`, and the
generation fields; or JSON with `images: [{"image_url": "data:image/png;base64,..."}]` and optional
`mask: {"image_url": ...}`. Several images are redrawn together, side by side on one sheet.

With a mask it inpaints (transparent mask pixels, or white ones in an opaque mask, are
redrawn); without one it runs image-to-image. `size` resizes the source; by default the
output keeps the source's size, scaled down into the pixel limit and to multiples of 8."""
VARIATIONS_DESCRIPTION = """multipart/form-data: `image` plus OpenAI's n, size, response_format, model, user (and the extension
fields): image-to-image with no prompt, redrawing IMAGEGEN_VARIATION_STRENGTH of it by default.
Without a model, and with only dall-e-2's fields and sizes, it answers as dall-e-2 did: links unless b64_json
is asked for, in the size named (default 1024x1024)."""


class ImageEditForm(ImageEditRequest):
    """POST /v1/images/edits as multipart/form-data: the fields, the image(s) and mask as files."""

    image: list[Upload] = Field(default_factory=list)
    mask: Upload | None = None


class ImageVariationForm(ImageVariationRequest):
    """POST /v1/images/variations as multipart/form-data: the fields and the image as a file."""

    image: list[Upload] = Field(default_factory=list)


# OpenAI's SDK sends several images as image[], svg as svg[model]; check_image_count words the image limits.
EDIT_FORM = FormSpelling(
    objects=frozenset({"svg"}),
    refused={"markup": "not supported; send a mask (its transparent pixels are redrawn)"},
    max_files={"image": MAX_OPENAI_EDIT_IMAGES},
)

Reader = Callable[[Request], Awaitable[GenerateInput]]


def openai_input(
    body: ImageGenerationRequest,
    runner: ImageGenRunner,
    kind: str,
    *,
    images: Sequence[tuple[str, bytes]] = (),
    mask: bytes | None = None,
    strength: float | None = None,
) -> GenerateInput:
    """An OpenAI body as the operation's request: OpenAI's fields resolved (model, size, quality, formats...),
    the generation options updated by them, and what the answer needs riding along."""
    not_applicable = () if kind == GENERATION else ("input_fidelity",)  # an edit field with no effect here
    plan = plan_request(body, runner, default_to_dall_e_2=kind != EDIT, not_applicable=not_applicable)
    options = body.model_copy(update=plan.option_updates())
    return GenerateInput(
        **options.model_dump(include=set(GenerationOptions.model_fields)),
        strength=strength,
        mask=None if mask is None else Upload(data=mask),
        stream=body.stream,
        openai=OpenAIRequest(plan, kind, tuple(images)),
    )


def read_generation(runner: ImageGenRunner) -> Callable[[ImageGenerationRequest], Awaitable[GenerateInput]]:
    async def read(body: ImageGenerationRequest) -> GenerateInput:
        return openai_input(body, runner, GENERATION)

    return read


def read_edit(runner: ImageGenRunner, settings: ImageGenSettings) -> Reader:
    async def read(request: Request) -> GenerateInput:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            fields, images, mask = await form_sources(request, ImageEditForm, MAX_OPENAI_EDIT_IMAGES)
            body = parse(ImageEditRequest, fields)
        elif parses_as_json(content_type.encode("latin-1")):
            body, images, mask = await json_sources(request, settings)
        else:
            raise UnsupportedMediaType(
                "send multipart/form-data with an image file (and optionally a mask), or JSON with "
                'images: [{"image_url": "data:image/png;base64,..."}]'
            )
        return openai_input(body, runner, EDIT, images=images, mask=mask, strength=body.strength)

    return read


def read_variation(runner: ImageGenRunner, settings: ImageGenSettings) -> Reader:
    async def read(request: Request) -> GenerateInput:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UnsupportedMediaType("send multipart/form-data with the image as a file field named image")
        fields, images, _ = await form_sources(request, ImageVariationForm, 1)
        body = parse(ImageVariationRequest, fields)
        strength = settings.variation_strength if body.strength is None else body.strength
        return openai_input(body, runner, VARIATION, images=images, strength=strength)

    return read


async def form_sources(
    request: Request, form: type[ImageEditRequest], most_images: int
) -> tuple[dict, list[tuple[str, bytes]], bytes | None]:
    """The form's text fields, its images (each with the field errors name) and mask."""
    fields = await read_form(request, form, EDIT_FORM)
    images: list[Upload] = fields.pop("image", [])
    mask: Upload | None = fields.pop("mask", None)
    if not images:
        raise InvalidArgument("image: upload the image as a file field named image", field="image")
    check_image_count(len(images), "image", most_images, mask is not None)
    names = ["image"] if len(images) == 1 else [f"image[{index}]" for index in range(len(images))]
    named = [(name, image.data) for name, image in zip(names, images, strict=True)]
    return fields, named, None if mask is None else mask.data


async def json_sources(
    request: Request, settings: ImageGenSettings
) -> tuple[ImageEditJsonRequest, list[tuple[str, bytes]], bytes | None]:
    """A JSON edit, its images (data: URLs, or fetched from allowed hosts) and mask as bytes."""
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
    return body, images, mask


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


# -- answers ---------------------------------------------------------------------------------------------------


def sse(event_type: str, **data) -> bytes:
    return sse_event({"type": event_type, **data}, event=event_type)


def usage(prompt_tokens: int) -> dict:
    """OpenAI's usage shape: the prompt's text tokens; Stable Diffusion makes images from no tokens."""
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0},
        "output_tokens": 0,
        "total_tokens": prompt_tokens,
    }


def b64(image: Image.Image, generation: Generation) -> str:
    encoded = encode_image(image, generation.output_format, generation.output_compression)
    return base64.b64encode(encoded).decode("ascii")


def image_fields(generation: Generation) -> dict:
    """The fields every image event of a stream carries."""
    plan = generation.openai.plan
    fields = {
        "output_format": generation.output_format,
        "background": "opaque",
        "quality": plan.quality or "auto",
    }
    if plan.safety_identifier:
        fields["safety_identifier"] = plan.safety_identifier
    return fields


def rest_answer(
    runner: ImageGenRunner, settings: ImageGenSettings, store: ImageStore
) -> Callable[[Call[Generation]], Awaitable[Response]]:
    """OpenAI's answer: ImagesResponse JSON (images as base64 or links into `store`), or a stream of events."""

    def render_response(images: list[GeneratedImage], generation: Generation, base_url: str) -> dict:
        answer = generation.openai
        plan = answer.plan
        data = []
        for generated in images:
            item = {"seed": generated.seed}
            image = answer.delivered(generated.image)
            if plan.response_format == "url":
                encoded = encode_image(image, generation.output_format, generation.output_compression)
                image_id = store.put(encoded, media_type(generation.output_format))
                item["url"] = f"{base_url}{FILES_PATH}/{image_id}"
            else:
                item["b64_json"] = b64(image, generation)
            if generated.nsfw is not None:
                item["nsfw_content_detected"] = generated.nsfw
            data.append(item)
        response = {"created": int(time.time()), "data": data, "model": runner.model_name}
        if not plan.profile.legacy:  # OpenAI's DALL-E answers carry none of these
            response.update(
                output_format=generation.output_format,
                size=answer.size_name,
                background="opaque",
                usage=usage(answer.prompt_tokens),
            )
            if plan.quality:
                response["quality"] = plan.quality
        if plan.safety_identifier:
            response["safety_identifier"] = plan.safety_identifier
        return response

    async def answer(call: Call[Generation]) -> Response:
        generation = call.plan
        if generation.openai.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **generation.openai.headers}
            return await rest_stream(render_events(call), SSE_MEDIA_TYPE, headers)
        images = await call.result()
        base_url = (settings.public_base_url or str(call.origin.base_url)).rstrip("/")
        payload = await asyncio.to_thread(render_response, images, generation, base_url)
        return JSONResponse(payload, headers=generation.openai.headers)

    return answer


async def render_events(call: Call[Generation]) -> AsyncIterator[bytes]:
    """The run as OpenAI's image events (and the `<kind>.progress` extension when asked for)."""
    generation = call.plan
    answer: OpenAIAnswer = generation.openai
    kind, fields = answer.kind, image_fields(generation)
    async for event in call.events():
        now = int(time.time())
        if isinstance(event, Progress):
            if answer.plan.step_progress:  # not an OpenAI event type: only when asked for
                yield sse(f"{kind}.progress", step=event.step, total_steps=event.total_steps, created_at=now)
        elif isinstance(event, Preview):
            for index, preview in enumerate(event.images):
                preview = await asyncio.to_thread(answer.preview, preview)
                yield sse(
                    f"{kind}.partial_image",
                    b64_json=await asyncio.to_thread(b64, preview, generation),
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
                delivered = await asyncio.to_thread(answer.delivered, image.image)
                yield sse(
                    f"{kind}.completed",
                    b64_json=await asyncio.to_thread(b64, delivered, generation),
                    image_index=index,
                    seed=image.seed,
                    nsfw_content_detected=image.nsfw,
                    size=answer.size_name,
                    created_at=now,
                    usage=usage(answer.prompt_tokens),
                    **fields,
                )


def add_image_files_route(router: APIRouter, store: ImageStore) -> None:
    """GET /v1/images/files/{id}: the images `response_format="url"` links to."""

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
