"""OpenAI's image parameters applied to Stable Diffusion: model names, sizes, quality, and what cannot apply.

No parameter is silently ignored. Each is honoured; refused with a 400 naming it; or accepted and
named in the `x-modelserve-ignored` response header when it has no meaning for this model:

- honoured: prompt, model (aliases below), n, size (OpenAI's sizes scaled into max_pixels), quality
  (denoising steps), response_format (url links served by GET /v1/images/files/{id}), output_format,
  output_compression, partial_images (in streams), stream, background opaque/auto, moderation auto (the server's
  safety checker setting), user / safety_identifier (echoed and put on the trace span as enduser.id),
  image (an edit's up to 16 images are redrawn together, side by side on one sheet), mask.
- refused: output_format gif/svg with frame_count, frame_duration_ms and svg, markup, a mask with several
  images, more than one image for a variation, file_id references, response_format=url for GPT image models (OpenAI refuses it) or when streaming.
- reported as not applied: style, complexity, input_fidelity, background=transparent (Stable Diffusion draws
  opaque RGB), partial_images without stream (previews exist only in streams), moderation=low (filtering is the
  operator's IMAGEGEN_SAFETY_CHECKER setting, not the caller's).
"""

import re
from dataclasses import dataclass

from opentelemetry import trace

from services.kit.errors import InvalidArgument, NotFound

from .images import MIN_SIDE, fit_size
from .runner import ImageGenRunner
from .settings import ImageGenSettings

DALL_E_MODELS = ("dall-e-2", "dall-e-3")
# The GPT image names of the openai SDK's ImageModel type.
GPT_IMAGE_MODELS = (
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "gpt-image-2.5-sunburst",
    "gpt-image-2.5-sunburst-2026-09-08",
    "gpt-image-2.5-flare",
    "gpt-image-2.5-flare-2026-09-08",
    "gpt-image-2.6-sunburst",
    "gpt-image-2.6-flare",
    "chatgpt-image-latest",
)
# Sizes OpenAI's models make; asked for by name, they are scaled into this server's pixel limit.
OPENAI_SIZES = frozenset(
    {"256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024", "1024x1792"}
)
SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
# DALL-E's quality names mean the GPT image ones with the same steps.
QUALITY_ALIASES = {"standard": "medium", "hd": "high"}
IGNORED_HEADER = "x-modelserve-ignored"
IMAGE_SIZE_HEADER = "x-modelserve-image-size"


@dataclass(frozen=True)
class ModelProfile:
    """How a model name answers: DALL-E names answer links and OpenAI's legacy response shape."""

    name: str
    legacy: bool = False  # dall-e-2/3: url by default; no size/output_format/quality/background fields
    gpt_image: bool = False  # GPT image models always answer base64: response_format=url is refused

    @property
    def default_response_format(self) -> str:
        return "url" if self.legacy else "b64_json"


def resolve_model(
    name: str | None, runner: ImageGenRunner, *, default: ModelProfile | None = None
) -> ModelProfile:
    if name is None:
        return default or ModelProfile(runner.model_name)
    if name in (runner.model_name, runner.settings.model):
        return ModelProfile(name)
    if name in DALL_E_MODELS:
        return ModelProfile(name, legacy=True)
    if name in GPT_IMAGE_MODELS:
        return ModelProfile(name, gpt_image=True)
    served = ", ".join((runner.model_name, *DALL_E_MODELS, *GPT_IMAGE_MODELS))
    raise NotFound(f"model {name!r} is not served here; available: {served}", field="model")


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


def resolve_size(size: str | None, settings: ImageGenSettings, field: str = "size") -> tuple[int, int] | None:
    """OpenAI's named sizes scale down into max_pixels (same aspect ratio, multiples of 8); any other size
    is made exactly as asked, or refused."""
    parsed = parse_size(size, field)
    if parsed is None or size.strip() not in OPENAI_SIZES:
        return parsed
    width, height = fit_size(*parsed, settings.max_pixels)
    if min(width, height) < MIN_SIDE:
        raise InvalidArgument(
            f"{field}: {size.strip()} scaled into this server's {settings.max_pixels} pixels "
            f"(IMAGEGEN_MAX_PIXELS) is {width}x{height}, below the {MIN_SIDE}-pixel minimum side",
            field=field,
        )
    return width, height


def resolve_quality(
    quality: str | None, steps: int | None, settings: ImageGenSettings
) -> tuple[str | None, int | None]:
    """(the GPT image quality applied or None for auto, the steps to run or None for the default)."""
    if quality is None or quality == "auto":
        return None, steps
    canonical = QUALITY_ALIASES.get(quality, quality)
    mapped = settings.quality_steps[canonical]
    if steps is not None and steps != mapped:
        raise InvalidArgument(
            f"quality: {quality} means {mapped} denoising steps here, and steps asks for {steps}; "
            "send one of them",
            field="quality",
        )
    return canonical, mapped


@dataclass(frozen=True)
class OpenAIPlan:
    """What an OpenAI request resolved to, beside the generation options."""

    profile: ModelProfile
    response_format: str
    steps: int | None
    size: tuple[int, int] | None
    quality: str | None
    safety_identifier: str | None
    ignored: tuple[str, ...]
    drop_previews: bool = False

    def option_updates(self) -> dict:
        """Changes to the generation options: the resolved steps, and no previews outside a stream."""
        return {"steps": self.steps, **({"partial_images": 0} if self.drop_previews else {})}

    def headers(self, width: int, height: int) -> dict[str, str]:
        headers = {IMAGE_SIZE_HEADER: f"{width}x{height}"}
        if self.ignored:
            headers[IGNORED_HEADER] = ", ".join(self.ignored)
        return headers


def plan_request(
    body,
    runner: ImageGenRunner,
    *,
    default_model: ModelProfile | None = None,
    not_applicable: tuple[str, ...] = (),
) -> OpenAIPlan:
    """Resolve and check the OpenAI fields of a generations, edits or variations body."""
    settings = runner.settings
    profile = resolve_model(body.model, runner, default=default_model)
    if body.response_format == "url" and profile.gpt_image:
        raise InvalidArgument(
            f"response_format: {profile.name} always answers b64_json, as OpenAI's GPT image models do; "
            "name dall-e-2 or dall-e-3 (or no model) for url",
            field="response_format",
        )
    if body.response_format == "url" and body.stream:
        raise InvalidArgument(
            "response_format: streamed events carry b64_json; url applies to non-streamed requests",
            field="response_format",
        )
    for name in ("frame_count", "frame_duration_ms", "svg"):
        if getattr(body, name) is not None:
            raise InvalidArgument(
                f"{name}: applies to gif or svg output, which this server does not make (png, jpeg, webp)",
                field=name,
            )
    quality, steps = resolve_quality(body.quality, body.steps, settings)
    ignored = [name for name in ("style", "complexity") if getattr(body, name) is not None]
    # Stable Diffusion draws opaque RGB: a transparent background is reported as not made, as OpenAI's
    # examples send it and expect an image.
    if body.background == "transparent":
        ignored.append("background")
    # Previews exist only in streams; OpenAI's own examples send partial_images without stream.
    unstreamed_previews = bool(getattr(body, "partial_images", 0)) and not getattr(body, "stream", False)
    if unstreamed_previews:
        ignored.append("partial_images")
    if body.moderation == "low":
        ignored.append("moderation")
    ignored += [name for name in not_applicable if getattr(body, name, None) is not None]
    safety_identifier = body.safety_identifier or body.user or None
    if safety_identifier:
        trace.get_current_span().set_attribute("enduser.id", safety_identifier)
    return OpenAIPlan(
        profile=profile,
        response_format=body.response_format or profile.default_response_format,
        steps=steps,
        size=resolve_size(body.size, settings),
        quality=quality,
        safety_identifier=safety_identifier,
        ignored=tuple(ignored),
        drop_previews=unstreamed_previews,
    )
