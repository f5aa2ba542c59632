"""OpenAI's image parameters applied to Stable Diffusion: model names, sizes, quality, and what cannot apply.

No parameter is silently ignored. Each is honoured; refused with a 400 naming it; or accepted and
named in the `x-modelserve-ignored` response header when it has no meaning for this model:

- honoured: prompt, model (aliases below; none means dall-e-2, OpenAI's default, when the request uses only
  dall-e-2's fields), n, size (OpenAI's sizes for the model named, made within max_pixels and resized to the size
  named), quality
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

import copy
import math
import re
import threading
from dataclasses import dataclass

from opentelemetry import trace
from PIL import Image

from services.kit.errors import InvalidArgument, NotFound

from .images import MIN_SIDE, fit_size, resized
from .runner import TEXT_TO_IMAGE, ImageGenRunner, ImageJob
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
# The sizes each of OpenAI's models answers in (the openai SDK's size literals and their docs), the default first.
DALL_E_SIZES = {
    "dall-e-2": ("1024x1024", "512x512", "256x256"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
}
GPT_IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536")
# GPT image models that also make any WIDTHxHEIGHT within OpenAI's bounds (the SDK's `size` docs).
CUSTOM_SIZE_MODELS = frozenset(
    {
        "gpt-image-2",
        "gpt-image-2-2026-04-21",
        "gpt-image-2.5-sunburst",
        "gpt-image-2.5-sunburst-2026-09-08",
        "gpt-image-2.5-flare",
        "gpt-image-2.5-flare-2026-09-08",
    }
)
CUSTOM_SIZE_MULTIPLE, CUSTOM_MAX_RATIO, CUSTOM_MAX_SIZE = 16, 3, (3840, 2160)
# Sizes OpenAI's models make; asked for by name, they are scaled into this server's pixel limit.
OPENAI_SIZES = frozenset({size for sizes in (*DALL_E_SIZES.values(), GPT_IMAGE_SIZES) for size in sizes})
# A request naming no model answers as dall-e-2 (OpenAI's default) when it uses only fields dall-e-2 takes.
DALL_E_2_FIELDS = frozenset({"prompt", "n", "size", "response_format", "user"})
SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
# DALL-E's quality names mean the GPT image ones with the same steps.
QUALITY_ALIASES = {"standard": "medium", "hd": "high"}
IGNORED_HEADER = "x-modelserve-ignored"
IMAGE_SIZE_HEADER = "x-modelserve-image-size"
TRUNCATED_HEADER = "x-modelserve-truncated"
# The event prefix of each route's stream (as in OpenAI's streams).
GENERATION, EDIT, VARIATION = "image_generation", "image_edit", "image_variation"


@dataclass(frozen=True)
class ModelProfile:
    """How a model name answers: DALL-E names answer links and OpenAI's legacy response shape."""

    name: str
    legacy: bool = False  # dall-e-2/3: url by default; no size/output_format/quality/background fields
    gpt_image: bool = False  # GPT image models always answer base64: response_format=url is refused
    # The sizes an OpenAI model answers in, its default first; none for the served model (any size, as made).
    sizes: tuple[str, ...] = ()
    custom_sizes: bool = False  # also any WIDTHxHEIGHT within OpenAI's bounds

    @property
    def default_response_format(self) -> str:
        return "url" if self.legacy else "b64_json"


def resolve_model(name: str | None, runner: ImageGenRunner) -> ModelProfile:
    if name is None or name in (runner.model_name, runner.settings.model):
        return ModelProfile(name or runner.model_name)
    if name in DALL_E_MODELS:
        return ModelProfile(name, legacy=True, sizes=DALL_E_SIZES[name])
    if name in GPT_IMAGE_MODELS:
        return ModelProfile(
            name, gpt_image=True, sizes=GPT_IMAGE_SIZES, custom_sizes=name in CUSTOM_SIZE_MODELS
        )
    served = ", ".join((runner.model_name, *DALL_E_MODELS, *GPT_IMAGE_MODELS))
    raise NotFound(f"model {name!r} is not served here; available: {served}", field="model")


def openai_default_model(body) -> str | None:
    """dall-e-2, OpenAI's default model, for a request using only fields dall-e-2 takes (and one of its sizes);
    None (the served model) when it uses any other: OpenAI picks a GPT image model when its parameters are used,
    and the Stable Diffusion extensions and other sizes are this server's own."""
    defaults = type(body).model_fields
    used = {name for name in body.model_fields_set if getattr(body, name) != defaults[name].default}
    size = parse_size(body.size)
    if used <= DALL_E_2_FIELDS and (size is None or "{}x{}".format(*size) in DALL_E_SIZES["dall-e-2"]):
        return "dall-e-2"
    return None


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
    return scaled_into_limit(parsed, settings, field)


def scaled_into_limit(
    size: tuple[int, int], settings: ImageGenSettings, field: str = "size"
) -> tuple[int, int]:
    width, height = fit_size(*size, settings.max_pixels)
    if min(width, height) < MIN_SIDE:
        raise InvalidArgument(
            f"{field}: {size[0]}x{size[1]} scaled into this server's {settings.max_pixels} pixels "
            f"(IMAGEGEN_MAX_PIXELS) is {width}x{height}, below the {MIN_SIDE}-pixel minimum side",
            field=field,
        )
    return width, height


def resolve_openai_size(
    size: str | None, profile: ModelProfile, settings: ImageGenSettings, served_name: str
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(the size to make, the size to answer in) for an OpenAI model name: one of the model's sizes (dall-e's
    default when none is named; for auto, None: chosen from the image made), made within max_pixels."""
    parsed = parse_size(size)
    if parsed is None and profile.legacy:
        parsed = parse_size(profile.sizes[0])
    if parsed is None:
        return None, None
    named = "{}x{}".format(*parsed)
    if named not in profile.sizes and not (profile.custom_sizes and custom_size_allowed(*parsed)):
        largest = "{}x{}".format(*CUSTOM_MAX_SIZE)
        custom = (
            f", or WIDTHxHEIGHT in multiples of {CUSTOM_SIZE_MULTIPLE} up to {largest} with an aspect ratio "
            f"within 1:{CUSTOM_MAX_RATIO}"
            if profile.custom_sizes
            else ""
        )
        auto = "" if profile.legacy else ", auto"
        raise InvalidArgument(
            f"size: {profile.name} answers in {', '.join(profile.sizes)}{auto}{custom}; got {size!r} "
            f"(name the model {served_name!r} for any other size)",
            field="size",
        )
    return scaled_into_limit(parsed, settings), parsed


def custom_size_allowed(width: int, height: int) -> bool:
    long_side, short_side = max(width, height), min(width, height)
    return (
        width % CUSTOM_SIZE_MULTIPLE == 0
        and height % CUSTOM_SIZE_MULTIPLE == 0
        and short_side > 0
        and long_side <= CUSTOM_MAX_SIZE[0]
        and short_side <= CUSTOM_MAX_SIZE[1]
        and long_side <= CUSTOM_MAX_RATIO * short_side
    )


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
    answer_size: tuple[int, int] | None = None  # an OpenAI size the images are resized to
    step_progress: bool = False  # the stream_progress extension: `<kind>.progress` events in the stream

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """The size of the images answered, for images made at width x height: the OpenAI size named; for an
        OpenAI model's auto, its size closest in shape to the image made; for the served model, as made."""
        if self.answer_size is not None or not self.profile.sizes:
            return self.answer_size or (width, height)
        sizes = [parse_size(size) for size in self.profile.sizes]
        return min(sizes, key=lambda size: abs(math.log(size[0] * height / (size[1] * width))))

    def option_updates(self) -> dict:
        """Changes to the generation options: the resolved steps, and no previews outside a stream."""
        return {"steps": self.steps, **({"partial_images": 0} if self.drop_previews else {})}

    def headers(self, width: int, height: int) -> dict[str, str]:
        headers = {IMAGE_SIZE_HEADER: f"{width}x{height}"}
        if self.ignored:
            headers[IGNORED_HEADER] = ", ".join(self.ignored)
        return headers


def check_response_size(n: int, size: tuple[int, int] | None, limit: int) -> None:
    """Refuse, before any work, a request whose images could not fit the response limit: n images at the size
    answered (resized up to OpenAI's sizes, whatever the render size), each at worst raw RGB in base64."""
    if size is None:
        return  # the served model's default size, already bounded by IMAGEGEN_MAX_PIXELS
    width, height = size
    worst = n * (width * height * 3 + height + 1024) * 4 // 3
    if worst > limit:
        raise InvalidArgument(
            f"size: {n} image(s) of {width}x{height} could make a response of {worst} bytes; the limit is {limit} "
            "(IMAGEGEN_MAX_RESPONSE_BYTES): ask for fewer or smaller images",
            field="size",
        )


def plan_request(
    body,
    runner: ImageGenRunner,
    *,
    default_to_dall_e_2: bool = False,
    not_applicable: tuple[str, ...] = (),
) -> OpenAIPlan:
    """Resolve and check the OpenAI fields of a generations, edits or variations body."""
    settings = runner.settings
    if body.model is None and default_to_dall_e_2:
        body = body.model_copy(update={"model": openai_default_model(body)})
    profile = resolve_model(body.model, runner)
    if body.stream_progress and not body.stream:
        raise InvalidArgument(
            "stream_progress: progress events exist only in streams; send stream: true with it",
            field="stream_progress",
        )
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
    if profile.sizes:
        size, answer_size = resolve_openai_size(body.size, profile, settings, runner.model_name)
    else:
        size, answer_size = resolve_size(body.size, settings), None
    check_response_size(getattr(body, "n", None) or 1, answer_size or size, settings.max_response_bytes)
    return OpenAIPlan(
        profile=profile,
        response_format=body.response_format or profile.default_response_format,
        steps=steps,
        size=size,
        quality=quality,
        safety_identifier=safety_identifier,
        ignored=tuple(ignored),
        drop_previews=unstreamed_previews,
        answer_size=answer_size,
        step_progress=body.stream_progress,
    )


@dataclass(frozen=True)
class OpenAIRequest:
    """What an OpenAI route's reader adds to the transport-neutral request: the OpenAI fields resolved, which route
    it came from, and its source images, each with the name errors give it (several are drawn on one sheet)."""

    plan: OpenAIPlan
    kind: str  # GENERATION, EDIT or VARIATION
    images: tuple[tuple[str, bytes], ...] = ()

    @property
    def prompt_required(self) -> bool:
        return self.kind != VARIATION  # a variation redraws its image unprompted


@dataclass(frozen=True)
class OpenAIAnswer:
    """How an OpenAI route answers a planned request: the resolved fields, its event kind, the prompt's tokens
    (for `usage`), the response headers, and the answered images' size (an OpenAI size, or as made)."""

    plan: OpenAIPlan
    kind: str
    stream: bool
    prompt_tokens: int
    headers: dict[str, str]
    size: tuple[int, int]

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


def openai_answer(request: OpenAIRequest, job: ImageJob, stream: bool, tokens: PromptTokens) -> OpenAIAnswer:
    """The answer's details for the job made (call it off the event loop: it tokenizes the prompts)."""
    counts = {"prompt": tokens.count(job.prompt)}
    if job.negative_prompt:
        counts["negative_prompt"] = tokens.count(job.negative_prompt)
    headers = request.plan.headers(job.width, job.height)
    truncated = [name for name, count in counts.items() if count > tokens.limit]
    if truncated:  # the text encoder reads the first `limit` tokens only
        headers[TRUNCATED_HEADER] = ", ".join(f"{name} (beyond {tokens.limit} tokens)" for name in truncated)
    size = request.plan.output_size(job.width, job.height)
    return OpenAIAnswer(request.plan, request.kind, stream, counts["prompt"], headers, size)
