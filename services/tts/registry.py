"""What the platform, images, tools and load tests need to know about TTS (services/registry.py)."""

from services.registry import ServiceEntry

SERVICE = ServiceEntry(
    name="tts",
    env_prefix="TTS_",
    title="TTS",
    load_weight=2,
    tiny_models=("tts/speecht5_tts", "tts/speecht5_vc", "tts/speecht5_hifigan", "tts/voices"),
)
