from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.kit.config import ServiceSettings

# OpenAI's `quality` values and the denoising steps each means by default (standard = medium, hd = high).
DEFAULT_QUALITY_STEPS = {"low": 15, "medium": 30, "high": 50, "xhigh": 75, "max": 100}


class ImageGenSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore", protected_namespaces=())

    # A Hub id or a local directory in the diffusers Stable Diffusion layout (model_index.json + components).
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    variant: str | None = Field(
        None, description="weights variant to load, e.g. fp16 (the Hub checkpoints ship one)"
    )
    safety_checker: bool = Field(
        True, description="run the checkpoint's safety checker (blacks out flagged images)"
    )

    # GPU memory and speed switches; all act on the shared components, so every task gets them.
    attention_slicing: str = Field(
        "off",
        pattern=r"^(off|auto|max|\d+)$",
        description="off, auto, max or a slice size: less memory, slower",
    )
    vae_tiling: bool = Field(False, description="decode large images tile by tile to bound VAE memory")
    compile_unet: bool = Field(False, description="torch.compile the UNet (slow first calls per shape)")
    compile_mode: str = Field(
        "default", description="torch.compile mode: default, reduce-overhead, max-autotune"
    )

    default_scheduler: str | None = Field(
        None, description="scheduler when a request names none; None: the checkpoint's"
    )
    default_steps: int = Field(30, ge=1)
    max_steps: int = Field(150, ge=1)
    default_guidance_scale: float = Field(7.5, ge=0)
    max_guidance_scale: float = Field(30.0, ge=0)
    max_images: int = Field(4, ge=1, description="images one request may ask for (n)")
    max_batch_images: int = Field(
        8, ge=1, description="images in one pipeline call, summed over batched requests"
    )
    max_pixels: int = Field(1024 * 1024, ge=64 * 64, description="width x height limit of an output image")
    max_input_pixels: int = Field(
        4096 * 4096, ge=64 * 64, description="largest uploaded image or mask accepted"
    )
    max_prompt_chars: int = Field(2000, ge=1)
    # 512x512-image denoising steps (the VAE decode counted as 4): 4 images of 1024x1024 at 50 steps fit (864);
    # 4 at 150 steps do not.
    max_request_cost: float | None = Field(
        864.0,
        gt=0,
        description="a request's images x pixels / 512^2 x (steps + 4 for the decode) above this gets 400",
    )
    max_batch_cost: float | None = Field(1728.0, gt=0, description="the same, summed over one pipeline call")

    # Diffusion is slow compared to the kit's defaults: fewer requests per batch, longer deadlines, bigger uploads.
    max_batch_size: int = Field(4, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    max_queue: int = Field(32, ge=1)
    request_timeout_s: float = Field(300.0, gt=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)

    # The OpenAI images API.
    quality_steps: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: dict(DEFAULT_QUALITY_STEPS),
        description="OpenAI quality -> denoising steps, JSON (keys low, medium, high, xhigh, max; missing ones "
        "keep their defaults; each is capped at max_steps); standard means medium, hd means high, auto means "
        "default_steps",
    )
    variation_strength: float = Field(
        0.7, gt=0, le=1, description="/v1/images/variations: how much of the source image to redraw"
    )
    public_base_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        description="scheme://host[:port][/prefix] that response_format=url links start with; default: the "
        "request's own Host header (and X-Forwarded-Proto from the proxies uvicorn trusts)",
    )
    url_ttl_s: float = Field(
        3600.0, gt=0, description="response_format=url: how long a link answers (OpenAI: 60 minutes)"
    )
    url_store_max_images: int = Field(256, ge=1, description="images kept for links; the oldest go first")
    url_store_max_bytes: int = Field(128 * 1024 * 1024, ge=1024, description="encoded bytes kept for links")
    remote_image_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated host names (or host:port) whose http(s) image_url the JSON edits route "
        "may fetch; empty: only data: URLs",
    )
    remote_image_timeout_s: float = Field(10.0, gt=0, description="time allowed to fetch one remote image")

    @field_validator("remote_image_hosts", mode="before")
    @classmethod
    def split_hosts(cls, value):
        if isinstance(value, str):
            return [host.strip().lower() for host in value.split(",") if host.strip()]
        return [str(host).strip().lower() for host in value]

    @model_validator(mode="after")
    def complete_quality_steps(self) -> "ImageGenSettings":
        unknown = set(self.quality_steps) - set(DEFAULT_QUALITY_STEPS)
        if unknown:
            known = list(DEFAULT_QUALITY_STEPS)
            raise ValueError(f"quality_steps: unknown qualities {sorted(unknown)}; known: {known}")
        # A deployment that lowers max_steps lowers what every quality means, rather than failing to start.
        self.quality_steps = {
            quality: min(self.quality_steps.get(quality, steps), self.max_steps)
            for quality, steps in DEFAULT_QUALITY_STEPS.items()
        }
        return self
