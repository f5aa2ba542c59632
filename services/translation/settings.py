from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.config import ServiceSettings

WMT19_PAIRS = ("en-ru", "ru-en", "en-de", "de-en")


class TranslationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRANSLATION_", extra="ignore", protected_namespaces=())

    # One model per language pair: a Hub id or a local directory (JSON in the environment).
    models: dict[str, str] = Field(default_factory=lambda: {p: f"facebook/wmt19-{p}" for p in WMT19_PAIRS})
    max_texts: int = Field(32, ge=1, description="texts in one request")
    max_text_chars: int = Field(2000, ge=1)
    max_num_beams: int = Field(8, ge=1)
    max_new_tokens: int = Field(512, ge=1, description="upper limit a request may ask for")
    default_max_new_tokens: int = Field(200, ge=1)
