"""REST routes, OpenAI-compatible: POST /v1/images/generations, /v1/images/edits (multipart or JSON),
/v1/images/variations, and GET /v1/images/files/{id} for the links `response_format="url"` answers.

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
import copy
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from services.kit.batcher import Done, DynamicBatcher
from services.kit.decoding import check_decoding_work, run_decoding
from services.kit.errors import InvalidArgument, NotFound, UnsupportedMediaType
from services.kit.json_limits import parses_as_json
from services.kit.operations import Call, Operation
from services.kit.streaming import SSE_MEDIA_TYPE, rest_stream, sse_event
from services.kit.validation import parse

from .files import ImageStore
from .images import decode_image, encode_image, mask_from, media_type, reference_sheet, resized
from .inputs import load_reference
from .openai_params import OpenAIPlan, plan_request
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
    check_before_decoding,
)
from .settings import ImageGenSettings

FILES_PATH = "/v1/images/files"
TRUNCATED_HEADER = "x-modelserve-truncated"


class EditInput(BaseModel):
    """An edit or variation as its body was read: the fields, and the images (each with the field errors name)
    and mask as bytes, not decoded yet."""

    fields: ImageEditRequest
    images: list[tuple[str, bytes]]
    mask: bytes | None = None

    @property
    def nbytes(self) -> int:
        return sum(len(data) for _, data in self.images) + len(self.mask or b"")


@dataclass(frozen=True)
class OpenAIGeneration:
    """A request of one of OpenAI's routes, checked: the runner's job and how to answer it."""

    job: ImageJob
    body: ImageGenerationRequest
    plan: OpenAIPlan
    kind: str  # the event prefix of its stream: image_generation, image_edit, image_variation
    prompt_tokens: int
    headers: dict[str, str]
    size: tuple[int, int]  # the answered images' (width, height): an OpenAI size, or as made
    nbytes: int = 0

    @property
    def size_name(self) -> str:
        return "{}x{}".format(*self.size)

    def delivered(self, image: Image.Image) -> Image.Image:
        return resized(image, self.size)

    def preview(self, image: Image.Image) -> Image.Image:
        """A latent-sized preview; for an OpenAI model name at the answer's size, as its event says."""
        return resized(image, self.size) if self.plan.profile.sizes else image


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

    def build_response(images: list[GeneratedImage], generation: OpenAIGeneration, base_url: str) -> dict:
        body, plan = generation.body, generation.plan
        data = []
        for generated in images:
            item = {"seed": generated.seed}
            image = generation.delivered(generated.image)
            if plan.response_format == "url":
                image_id = store.put(encoded(image, body), media_type(body.output_format))
                item["url"] = f"{base_url}{FILES_PATH}/{image_id}"
            else:
                item["b64_json"] = b64(image, body)
            if generated.nsfw is not None:
                item["nsfw_content_detected"] = generated.nsfw
            data.append(item)
        response = {"created": int(time.time()), "data": data, "model": runner.model_name}
        if not plan.profile.legacy:  # OpenAI's DALL-E answers carry none of these
            response.update(
                output_format=body.output_format,
                size=generation.size_name,
                background="opaque",
                usage=usage(generation.prompt_tokens),
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

    def planned(body: ImageGenerationRequest, plan: OpenAIPlan, kind: str, make_job, nbytes: int = 0):
        """The job (`make_job` may decode images: this runs in a worker thread), its prompt's tokens and the
        answer's headers."""
        job = make_job()
        counts = {"prompt": tokens.count(body.prompt)}
        if body.negative_prompt:
            counts["negative_prompt"] = tokens.count(body.negative_prompt)
        headers = plan.headers(job.width, job.height)
        truncated = [name for name, count in counts.items() if count > tokens.limit]
        if truncated:  # the text encoder reads the first `limit` tokens only
            headers[TRUNCATED_HEADER] = ", ".join(
                f"{name} (beyond {tokens.limit} tokens)" for name in truncated
            )
        size = plan.output_size(job.width, job.height)
        return OpenAIGeneration(job, body, plan, kind, counts["prompt"], headers, size, nbytes)

    async def answer(call: Call[OpenAIGeneration]) -> Response:
        generation = call.job
        if generation.body.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **generation.headers}
            return await rest_stream(stream_events(call), SSE_MEDIA_TYPE, headers)
        images = await call.result()
        base_url = (settings.public_base_url or str(call.origin.base_url)).rstrip("/")
        payload = await asyncio.to_thread(build_response, images, generation, base_url)
        return JSONResponse(payload, headers=generation.headers)

    async def stream_events(call: Call[OpenAIGeneration]) -> AsyncIterator[bytes]:
        generation = call.job
        body, kind = generation.body, generation.kind
        fields = image_fields(body, generation.plan)
        async for event in call.events():
            now = int(time.time())
            if isinstance(event, Progress):
                if generation.plan.step_progress:  # not an OpenAI event type: only when asked for
                    yield sse(
                        f"{kind}.progress", step=event.step, total_steps=event.total_steps, created_at=now
                    )
            elif isinstance(event, Preview):
                for index, preview in enumerate(event.images):
                    preview = await asyncio.to_thread(generation.preview, preview)
                    yield sse(
                        f"{kind}.partial_image",
                        b64_json=await asyncio.to_thread(b64, preview, body),
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
                    delivered = await asyncio.to_thread(generation.delivered, image.image)
                    yield sse(
                        f"{kind}.completed",
                        b64_json=await asyncio.to_thread(b64, delivered, body),
                        image_index=index,
                        seed=image.seed,
                        nsfw_content_detected=image.nsfw,
                        size=generation.size_name,
                        created_at=now,
                        usage=usage(generation.prompt_tokens),
                        **fields,
                    )

    def edit_job(edit: EditInput, plan: OpenAIPlan, strength: float | None, prompt_required: bool):
        """Checks the edit's parameters, then returns the step that decodes its uploads into the job."""
        body = edit.fields
        options = body.model_copy(update=plan.option_updates())
        job_options = dict(
            size=plan.size, size_field="size", streaming=body.stream, strength=strength, prompt_required=prompt_required
        )
        check_before_decoding(options, runner, has_mask=edit.mask is not None, **job_options)

        def make_job() -> ImageJob:
            limit = settings.max_input_pixels
            # Every upload's structure before any is decoded: the sheet decodes them one after another.
            for field, data in [*edit.images, *([("mask", edit.mask)] if edit.mask is not None else [])]:
                check_decoding_work(data, field)
            if len(edit.images) == 1:
                field, data = edit.images[0]
                image = decode_image(data, field=field, max_pixels=limit)
            else:
                image = reference_sheet(edit.images, max_pixels=limit)
            mask = (
                None
                if edit.mask is None
                else mask_from(decode_image(edit.mask, field="mask", max_pixels=limit))
            )
            return build_job(options, runner, image=image, mask=mask, **job_options)

        return make_job

    async def plan_generations(body: ImageGenerationRequest) -> OpenAIGeneration:
        plan = plan_request(body, runner, default_to_dall_e_2=True)

        def make_job() -> ImageJob:
            options = body.model_copy(update=plan.option_updates())
            return build_job(options, runner, size=plan.size, size_field="size", streaming=body.stream)

        return await asyncio.to_thread(planned, body, plan, "image_generation", make_job)

    async def plan_edits(edit: EditInput) -> OpenAIGeneration:
        plan = plan_request(edit.fields, runner, not_applicable=("input_fidelity",))
        make_job = edit_job(edit, plan, edit.fields.strength, prompt_required=True)
        return await run_decoding(planned, edit.fields, plan, "image_edit", make_job, edit.nbytes)

    async def plan_variations(edit: EditInput) -> OpenAIGeneration:
        body = edit.fields
        plan = plan_request(body, runner, default_to_dall_e_2=True, not_applicable=("input_fidelity",))
        strength = settings.variation_strength if body.strength is None else body.strength
        make_job = edit_job(edit, plan, strength, prompt_required=False)
        return await run_decoding(planned, body, plan, "image_variation", make_job, edit.nbytes)

    def operation(name: str, request: type[BaseModel], prepare) -> Operation:
        return Operation(
            name,
            request,
            None,
            batcher,
            prepare=prepare,
            payload=lambda generation: generation.job,
            key=lambda generation: generation.job.batch_key,
            cost=lambda generation: generation.job.cost,
            nbytes=lambda generation: generation.nbytes,
        )

    async def read_edit(request: Request) -> EditInput:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            fields, images, mask = await read_form(request, with_mask=True)
            return EditInput(fields=parse(ImageEditRequest, fields), images=images, mask=mask)
        if parses_as_json(content_type.encode("latin-1")):
            return await read_json_edit(request)
        raise UnsupportedMediaType(
            "send multipart/form-data with an image file (and optionally a mask), or JSON with "
            'images: [{"image_url": "data:image/png;base64,..."}]'
        )

    async def read_variation(request: Request) -> EditInput:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UnsupportedMediaType("send multipart/form-data with the image as a file field named image")
        fields, images, _ = await read_form(request, with_mask=False)
        return EditInput(fields=parse(ImageVariationRequest, fields), images=images)

    async def read_json_edit(request: Request) -> EditInput:
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
        return EditInput(fields=body, images=images, mask=mask)

    async def read_form(
        request: Request, *, with_mask: bool
    ) -> tuple[dict, list[tuple[str, bytes]], bytes | None]:
        """The form's fields, its images (each with the field errors name) and mask; OpenAI's `image[]` and
        `svg[model]` spellings are read as `image` and `svg`."""
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
            data = [(name, await image.read()) for name, image in zip(names, images, strict=True)]
            mask = await masks[0].read() if masks else None
        return fields, data, mask

    answered = dict(answer=answer, response_model=ImagesResponse, response_model_exclude_none=True)
    operation("generations", ImageGenerationRequest, plan_generations).add_route(
        router, "/v1/images/generations", **answered
    )
    operation("edits", EditInput, plan_edits).add_route(
        router,
        "/v1/images/edits",
        read=read_edit,
        description="""multipart/form-data: `image` (PNG/JPEG/WebP; up to 16 as `image[]`), optional `mask`, and the
generation fields; or JSON with `images: [{"image_url": "data:image/png;base64,..."}]` and optional
`mask: {"image_url": ...}`. Several images are redrawn together, side by side on one sheet.

With a mask it inpaints (transparent mask pixels, or white ones in an opaque mask, are
redrawn); without one it runs image-to-image. `size` resizes the source; by default the
output keeps the source's size, scaled down into the pixel limit and to multiples of 8.""",
        **answered,
    )
    operation("variations", EditInput, plan_variations).add_route(
        router,
        "/v1/images/variations",
        read=read_variation,
        description="""multipart/form-data: `image` plus OpenAI's n, size, response_format, model, user (and the extension
fields): image-to-image with no prompt, redrawing IMAGEGEN_VARIATION_STRENGTH of it by default.
Without a model, and with only dall-e-2's fields and sizes, it answers as dall-e-2 did: links unless b64_json
is asked for, in the size named (default 1024x1024).""",
        **answered,
    )

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
