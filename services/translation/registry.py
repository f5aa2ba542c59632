"""What the platform, images, tools and load tests need to know about translation (services/registry.py)."""

from services.registry import ServiceEntry

SERVICE = ServiceEntry(
    name="translation",
    env_prefix="TRANSLATION_",
    title="Translation",
    load_weight=4,  # cheap, frequent calls
    tiny_models=(
        "translation/wmt19-en-de",
        "translation/wmt19-de-en",
        "translation/wmt19-en-ru",
        "translation/wmt19-ru-en",
    ),
)
