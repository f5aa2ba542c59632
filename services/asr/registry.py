"""What the platform, images, tools and load tests need to know about ASR (services/registry.py)."""

from services.registry import ServiceEntry

SERVICE = ServiceEntry(
    name="asr",
    env_prefix="ASR_",
    title="ASR",
    load_weight=2,
    tiny_models=("asr/whisper", "asr/whisper-assistant"),
)
