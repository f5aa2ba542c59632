"""The operation's request (GenerateInput) and plan (Generation), OpenAI's request and response shapes, and
the checks against configured limits.

The OpenAI shapes follow its images API (`/v1/images/generations`, `/edits`, `/variations`); the Stable Diffusion
controls are extension fields an OpenAI client sends through `extra_body`. How each OpenAI field applies is in
openai_params; rest reads those routes into GenerateInput.
"""

import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.kit.decoding import check_decoding_work
from services.kit.errors import InvalidArgument
from services.kit.operations import Upload

from .images import MIN_SIDE, SIZE_MULTIPLE, decode_image, fit_size, mask_from, reference_sheet
from .inputs import ImageReference
from .openai_params import OpenAIAnswer, OpenAIRequest, PromptTokens, openai_answer
from .runner import (
    DEFAULT_STRENGTH,
    IMAGE_TO_IMAGE,
    INPAINT,
    TEXT_TO_IMAGE,
    ImageGenRunner,
    ImageJob,
    scheduler_name,
    scheduler_names,
)
from .settings import ImageGenSettings

OutputFormat = Literal["png", "jpeg", "webp"]
MAX_SEED = 2**32 - 1
MAX_IDENTIFIER_CHARS = 256
# OpenAI's edits take up to 16 images; several are drawn side by side on one source image (images.reference_sheet).
MAX_OPENAI_EDIT_IMAGES = 16


class GenerationOptions(BaseModel):
    """Fields every way of asking for images shares (REST generations and edits, gRPC)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(description="what to draw")
    negative_prompt: str | None = Field(None, description="what to steer away from")
    n: int = Field(1, ge=1, description="images to generate; image i uses seed + i")
    steps: int | None = Field(None, ge=1, description="denoising steps")
    guidance_scale: float | None = Field(
        None, ge=0, description="classifier-free guidance; <= 1 turns it off"
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed and parameters -> same pixels")
    scheduler: str | None = Field(None, examples=["euler_ancestral", "dpm++_2m"])
    output_format: OutputFormat = "png"
    output_compression: int | None = Field(
        None, ge=0, le=100, description="JPEG/WebP quality; png takes only 100 (lossless)"
    )
    partial_images: int = Field(
        0, ge=0, description="streaming only: previews spread over the denoising steps"
    )


class ImageGenerationRequest(GenerationOptions):
    """POST /v1/images/generations: OpenAI's fields plus the extensions above (openai_params says how each
    OpenAI field applies)."""

    model: str | None = Field(
        None,
        description="the served model, or an OpenAI name (dall-e-*, gpt-image-*); none: dall-e-2 (OpenAI's "
        "default) when only dall-e-2's fields and sizes are used, else the served model",
    )
    size: str | None = Field(
        None,
        examples=["512x512"],
        description="WIDTHxHEIGHT or auto; an OpenAI model name takes its own sizes, made within max_pixels and "
        "resized to the size named; the served model makes any size within max_pixels",
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="default: url for dall-e-2/3, b64_json otherwise"
    )
    stream: bool = False
    stream_progress: bool = Field(
        False,
        description="extension, streams only: also send `<kind>.progress` (step, total_steps) after every "
        "denoising step; not an OpenAI event type, so off by default",
    )
    quality: Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"] | None = Field(
        None, description="denoising steps (IMAGEGEN_QUALITY_STEPS); standard = medium, hd = high"
    )
    style: Literal["vivid", "natural"] | None = Field(None, description="accepted; reported as not applied")
    background: Literal["transparent", "opaque", "auto"] | None = Field(
        None, description="images are opaque; transparent is refused"
    )
    moderation: Literal["low", "auto"] | None = Field(
        None, description="auto: the server's safety checker; low is reported as not applied"
    )
    complexity: Literal["low", "medium", "high"] | None = Field(
        None, description="accepted; reported as not applied"
    )
    frame_count: int | None = Field(None, description="refused: no gif output")
    frame_duration_ms: int | None = Field(None, description="refused: no gif output")
    svg: Any = Field(None, description="refused: no svg output")
    user: str | None = Field(None, max_length=MAX_IDENTIFIER_CHARS, description="see safety_identifier")
    safety_identifier: str | None = Field(
        None,
        max_length=MAX_IDENTIFIER_CHARS,
        description="echoed, and set as enduser.id on the request's trace span",
    )

    @model_validator(mode="before")
    @classmethod
    def null_means_default(cls, data: Any) -> Any:
        # OpenAI's parameters are nullable: null asks for the default, as leaving the field out does.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class ImageEditRequest(ImageGenerationRequest):
    """The form fields of POST /v1/images/edits (the image and mask come as files)."""

    strength: float | None = Field(None, gt=0, le=1, description="how much of the source to redraw")
    input_fidelity: Literal["high", "low"] | None = Field(
        None, description="accepted; reported as not applied"
    )


class ImageEditJsonRequest(ImageEditRequest):
    """POST /v1/images/edits as JSON: images and mask as references (data: URLs)."""

    images: list[ImageReference] = Field(
        min_length=1, description="1-16 images; several are redrawn together, side by side on one sheet"
    )
    mask: ImageReference | None = None


class ImageVariationRequest(ImageEditRequest):
    """The form fields of POST /v1/images/variations: image-to-image without a prompt."""

    prompt: str = Field("", max_length=0, description="none: a variation redraws the image unprompted")


class GenerateFields(GenerationOptions):
    """gRPC GenerateRequest (and the OIP model's parameters) minus the image bytes."""

    width: int | None = None
    height: int | None = None
    strength: float | None = Field(None, gt=0, le=1)

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height), or None for the default; one without the other is refused."""
        if (self.width is None) != (self.height is None):
            missing = "height" if self.height is None else "width"
            raise InvalidArgument(f"{missing}: give width and height together (or neither)", field=missing)
        return None if self.width is None else (self.width, self.height)


class GenerateInput(GenerateFields):
    """The operation's request, whatever the transport: the fields above with the source image and mask, each
    an encoded file or (OIP only) pixels. gRPC's GenerateRequest and the OIP model's inputs map to it one to
    one; OpenAI's routes resolve their own fields into it and add `openai` (no gRPC field or OIP parameter sets
    it)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image: Upload | None = None
    mask: Upload | None = None
    image_pixels: np.ndarray | None = None  # H x W x 3, uint8
    mask_pixels: np.ndarray | None = None  # H x W, uint8: 255 redraws, 0 keeps
    stream: bool = False  # set by the transport: previews are only made for streams
    openai: OpenAIRequest | None = None

    @property
    def encoded_files(self) -> list[tuple[str, bytes]]:
        """The encoded sources, each with the name errors give it: the image(s), then the mask."""
        images = list(self.openai.images) if self.openai else []
        if self.image is not None:
            images.append(("image", self.image.data))
        return images + ([("mask", self.mask.data)] if self.mask is not None else [])

    @property
    def has_source(self) -> bool:
        return bool(self.encoded_files) or self.image_pixels is not None or self.mask_pixels is not None

    @property
    def nbytes(self) -> int:
        files = sum(len(data) for _, data in self.encoded_files)
        pixels = sum(array.nbytes for array in (self.image_pixels, self.mask_pixels) if array is not None)
        return files + pixels + len(self.prompt.encode())

    def job_options(self) -> dict:
        """build_job's options: an OpenAI route names its size (a variation, its missing prompt) its own way."""
        options = dict(streaming=self.stream, strength=self.strength)
        if self.openai is None:
            return dict(options, size=self.size, size_field="width")
        return dict(
            options,
            size=self.openai.plan.size,
            size_field="size",
            prompt_required=self.openai.prompt_required,
        )


@dataclass(frozen=True)
class Generation:
    """A GenerateInput checked (the kit's Plan): the runner's job, how to encode its images, and for OpenAI's
    routes how to answer."""

    job: ImageJob
    output_format: str
    output_compression: int | None
    nbytes: int
    openai: OpenAIAnswer | None = None

    @property
    def key(self) -> tuple:
        return self.job.batch_key

    @property
    def cost(self) -> float:
        return self.job.cost


def check_before_decoding(body: GenerateInput, runner: ImageGenRunner) -> None:
    """build_job's checks with stand-in sources (every parameter: steps, n, strength, size...), so that a
    request refused for its parameters costs no decoding; run it on the event loop, before plan_generation."""
    stand_in = Image.new("L", (MIN_SIDE, MIN_SIDE))
    has_mask = body.mask is not None or body.mask_pixels is not None
    build_job(body, runner, image=stand_in, mask=stand_in if has_mask else None, **body.job_options())


def plan_generation(body: GenerateInput, runner: ImageGenRunner, tokens: PromptTokens) -> Generation:
    """Decodes the sources (call it off the event loop, through run_decoding when there are any) and checks
    the request against the limits."""
    limit = runner.settings.max_input_pixels
    # Every upload's structure before any is decoded: a sheet decodes its images one after another.
    for field, data in body.encoded_files:
        check_decoding_work(data, field)
    if body.openai is not None and len(body.openai.images) > 1:
        image = reference_sheet(body.openai.images, max_pixels=limit)
    elif body.openai is not None and body.openai.images:
        field, data = body.openai.images[0]
        image = decode_image(data, field=field, max_pixels=limit)
    else:
        image = source(body.image, body.image_pixels, "image", "image_pixels", limit)
    mask = source(body.mask, body.mask_pixels, "mask", "mask_pixels", limit)
    job = build_job(
        body, runner, image=image, mask=None if mask is None else mask_from(mask), **body.job_options()
    )
    answer = None if body.openai is None else openai_answer(body.openai, job, body.stream, tokens)
    return Generation(job, body.output_format, body.output_compression, body.nbytes, answer)


def source(
    encoded: Upload | None, pixels: np.ndarray | None, encoded_name: str, pixels_name: str, max_pixels: int
) -> Image.Image | None:
    """An image (or mask) from its encoded file or its pixels, whichever was sent."""
    if encoded is not None and pixels is not None:
        raise InvalidArgument(
            f"{pixels_name}: send {encoded_name} or {pixels_name}, not both", field=pixels_name
        )
    if encoded is not None:
        return decode_image(encoded.data, field=encoded_name, max_pixels=max_pixels)
    if pixels is None:
        return None
    if 0 in pixels.shape:
        raise InvalidArgument(f"{pixels_name}: shape {list(pixels.shape)} holds no pixels", field=pixels_name)
    return Image.fromarray(np.ascontiguousarray(pixels))


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = Field(None, description="GET it (with the API key) until IMAGEGEN_URL_TTL_S passes")
    seed: int
    nsfw_content_detected: bool | None = None


class ImageUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    total_tokens: int


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    model: str
    output_format: OutputFormat | None = None
    size: str | None = Field(
        None,
        description="the images' size: one of the OpenAI model's sizes, or as made for the served model (left out "
        "for dall-e names, as OpenAI does); the size made is in x-modelserve-image-size",
    )
    background: Literal["opaque"] | None = None
    quality: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    safety_identifier: str | None = None
    usage: ImageUsage | None = None


def check_size(width: int, height: int, settings: ImageGenSettings, field: str) -> None:
    for side in (width, height):
        if side < MIN_SIDE or side % SIZE_MULTIPLE:
            raise InvalidArgument(
                f"{field}: width and height must be multiples of {SIZE_MULTIPLE} of at least {MIN_SIDE}, "
                f"got {width}x{height}",
                field=field,
            )
    if width * height > settings.max_pixels:
        raise InvalidArgument(
            f"{field}: {width}x{height} is {width * height} pixels; the limit is {settings.max_pixels}",
            field=field,
        )


def build_job(
    options: GenerationOptions,
    runner: ImageGenRunner,
    *,
    size: tuple[int, int] | None,
    size_field: str,
    streaming: bool,
    strength: float | None = None,
    image: Image.Image | None = None,
    mask: Image.Image | None = None,
    prompt_required: bool = True,
) -> ImageJob:
    """Check a request against the service limits (every refusal names the field) and pick defaults.

    No image: text-to-image. An image: image-to-image, or inpainting when a mask comes with it.
    """
    s = runner.settings
    if prompt_required and not options.prompt.strip():
        raise InvalidArgument("prompt: must not be empty", field="prompt")
    for name, text in (("prompt", options.prompt), ("negative_prompt", options.negative_prompt or "")):
        if len(text) > s.max_prompt_chars:
            raise InvalidArgument(
                f"{name}: {len(text)} characters exceeds the limit of {s.max_prompt_chars}", field=name
            )
    if options.n > s.max_images:
        raise InvalidArgument(f"n: at most {s.max_images} images per request, got {options.n}", field="n")
    steps = options.steps or s.default_steps
    if steps > runner.max_steps:
        raise InvalidArgument(f"steps: {steps} exceeds the limit of {runner.max_steps}", field="steps")
    guidance = s.default_guidance_scale if options.guidance_scale is None else options.guidance_scale
    if guidance > s.max_guidance_scale:
        raise InvalidArgument(
            f"guidance_scale: {guidance:g} exceeds the limit of {s.max_guidance_scale:g}",
            field="guidance_scale",
        )
    scheduler = runner.default_scheduler() if options.scheduler is None else scheduler_name(options.scheduler)
    if scheduler is None:
        raise InvalidArgument(
            f"scheduler: unknown scheduler {options.scheduler!r}; available: {', '.join(scheduler_names())}",
            field="scheduler",
        )
    if options.output_compression not in (None, 100) and options.output_format == "png":
        raise InvalidArgument(
            "output_compression: below 100 applies to jpeg and webp only (png is lossless)",
            field="output_compression",
        )
    if options.partial_images and not streaming:
        raise InvalidArgument("partial_images: previews are only sent when streaming", field="partial_images")
    if options.partial_images > steps:
        raise InvalidArgument(f"partial_images: at most one per step ({steps})", field="partial_images")

    if mask is not None and image is None:
        raise InvalidArgument("mask: a mask needs an image to edit", field="mask")
    if image is None and strength is not None:
        raise InvalidArgument("strength: applies to image-to-image and inpainting only", field="strength")
    task = TEXT_TO_IMAGE if image is None else INPAINT if mask is not None else IMAGE_TO_IMAGE
    if image is not None and mask is not None and mask.size != image.size:
        raise InvalidArgument(
            f"mask: {mask.size[0]}x{mask.size[1]} differs from the image's {image.size[0]}x{image.size[1]}",
            field="mask",
        )
    if size is None and image is not None:  # the source's size, scaled into the pixel limit
        size, size_field = fit_size(*image.size, s.max_pixels), "image"
    width, height = size or runner.native_size
    check_size(width, height, s, size_field)
    if task != TEXT_TO_IMAGE:
        strength = DEFAULT_STRENGTH[task] if strength is None else strength
        if int(steps * strength) < 1:
            raise InvalidArgument(
                f"strength: {strength:g} x {steps} steps leaves no denoising step; raise either",
                field="strength",
            )
        image = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        if mask is not None:
            mask = mask.resize((width, height), Image.Resampling.NEAREST)

    seed = random.randint(0, MAX_SEED) if options.seed is None else options.seed
    return ImageJob(
        task=task,
        prompt=options.prompt,
        negative_prompt=options.negative_prompt or "",
        seeds=tuple((seed + i) % (MAX_SEED + 1) for i in range(options.n)),
        width=width,
        height=height,
        steps=steps,
        guidance_scale=float(guidance),
        scheduler=scheduler,
        strength=strength,
        image=image,
        mask=mask,
        partial_images=options.partial_images,
    )
