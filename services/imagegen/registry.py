"""What the platform, images, tools and load tests need to know about ImageGen (services/registry.py)."""

from services.registry import ServiceEntry

SERVICE = ServiceEntry(
    name="imagegen",
    env_prefix="IMAGEGEN_",
    title="ImageGen",
    load_weight=1,  # expensive calls, less often
    tiny_models=("imagegen/stable-diffusion",),
)
