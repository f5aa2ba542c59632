from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.config import ServiceSettings


class ImageGenSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore", protected_namespaces=())

    # A Hub id or a local directory in the diffusers Stable Diffusion layout (model_index.json + components).
    model: str = "runwayml/stable-diffusion-v1-5"
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
    # 512x512-image denoising steps: 4 images of 1024x1024 at 50 steps fit; 4 at 150 steps do not.
    max_request_cost: float | None = Field(
        800.0, gt=0, description="a request's images x pixels / 512^2 x steps above this gets 400"
    )
    max_batch_cost: float | None = Field(1600.0, gt=0, description="the same, summed over one pipeline call")

    # Diffusion is slow compared to the kit's defaults: fewer requests per batch, longer deadlines, bigger uploads.
    max_batch_size: int = Field(4, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    max_queue: int = Field(32, ge=1)
    request_timeout_s: float = Field(300.0, gt=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
