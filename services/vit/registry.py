"""What the platform, images, tools and load tests need to know about ViT (services/registry.py)."""

from services.registry import ServiceEntry

SERVICE = ServiceEntry(
    name="vit",
    env_prefix="VIT_",
    title="ViT",
    # TensorFlow Serving's protocol on its own ports, and TensorFlow in its own process and image.
    torch=False,
    separate_process=True,
    load_weight=4,  # cheap, frequent calls
    tiny_models=("vit/hf-vit",),
)
