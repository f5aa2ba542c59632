"""Request/response schemas shared by REST and gRPC, and the checks against configured limits.

The REST shapes follow OpenAI's images API (`/v1/images/generations`, `/v1/images/edits`); the
Stable Diffusion controls are extension fields an OpenAI client sends through `extra_body`.
"""

import random
import re
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from services.kit.errors import InvalidArgument, NotFound

from .images import MIN_SIDE, SIZE_MULTIPLE, fit_size
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
SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


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
    output_compression: int | None = Field(None, ge=0, le=100, description="JPEG/WebP quality")
    partial_images: int = Field(
        0, ge=0, description="streaming only: previews spread over the denoising steps"
    )


class ImageGenerationRequest(GenerationOptions):
    """POST /v1/images/generations (OpenAI's fields plus the extensions above)."""

    model: str | None = None
    size: str | None = Field(None, examples=["512x512"], description="WIDTHxHEIGHT or auto")
    response_format: Literal["b64_json", "url"] | None = None
    stream: bool = False
    user: str | None = Field(None, description="accepted for OpenAI compatibility; not used")


class ImageEditRequest(ImageGenerationRequest):
    """The form fields of POST /v1/images/edits (the image and mask come as files)."""

    strength: float | None = Field(None, gt=0, le=1, description="how much of the source to redraw")


class GenerateFields(GenerationOptions):
    """gRPC GenerateRequest minus the image bytes."""

    width: int | None = None
    height: int | None = None
    strength: float | None = Field(None, gt=0, le=1)


class ImageData(BaseModel):
    b64_json: str
    seed: int
    nsfw_content_detected: bool | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat
    size: str
    model: str


def check_model(model: str | None, runner: ImageGenRunner) -> None:
    if model is not None and model not in (runner.model_name, runner.settings.model):
        raise NotFound(f"model {model!r} is not served here; available: {runner.model_name}", field="model")


def parse_size(size: str | None, field: str = "size") -> tuple[int, int] | None:
    """'512x768' -> (512, 768); None or 'auto' -> None (the default size)."""
    if size is None or size.strip().lower() == "auto":
        return None
    match = SIZE_PATTERN.match(size)
    if not match:
        raise InvalidArgument(
            f"{field}: expected WIDTHxHEIGHT such as 512x512 (or auto), got {size!r}", field=field
        )
    return int(match[1]), int(match[2])


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
) -> ImageJob:
    """Check a request against the service limits (every refusal names the field) and pick defaults.

    No image: text-to-image. An image: image-to-image, or inpainting when a mask comes with it.
    """
    s = runner.settings
    if not options.prompt.strip():
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
    if options.output_compression is not None and options.output_format == "png":
        raise InvalidArgument(
            "output_compression: applies to jpeg and webp only (png is lossless)", field="output_compression"
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
