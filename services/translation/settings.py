from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.config import ServiceSettings
from services.kit.quantize import Quantize

WMT19_PAIRS = ("en-ru", "ru-en", "en-de", "de-en")

# What TRANSLATION_QUANTIZE=auto does on a CPU (int8 models or not). bench/bench_quantize.py, 2 cores (load
# 1.6), tiny random-weight FSMT (no real weights offline), 24 greedy texts: int8 0.64x float32's speed (1.64
# s vs 1.04 s: on layers this small quantizing each call's activations costs more than it saves) and 20.8 %
# of the translations identical. It fails the bar (>= 95 % identical); a real wmt19 model needs its own
# measurement.
QUANTIZE_AUTO_INT8 = False


class TranslationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRANSLATION_", extra="ignore", protected_namespaces=())

    # One model per language pair: a Hub id or a local directory (JSON in the environment).
    models: dict[str, str] = Field(default_factory=lambda: {p: f"facebook/wmt19-{p}" for p in WMT19_PAIRS})
    quantize: Quantize = Field(
        "auto",
        description="the models' linear layers: int8 (dynamic, CPU only; ignored on GPU), none, or auto "
        "(int8 on CPU where it measured faithful, see QUANTIZE_AUTO_INT8)",
    )
    max_texts: int = Field(32, ge=1, description="texts in one request")
    max_text_chars: int = Field(2000, ge=1)
    max_num_beams: int = Field(8, ge=1)
    max_new_tokens: int = Field(512, ge=1, description="upper limit a request may ask for")
    default_max_new_tokens: int = Field(200, ge=1)
    # Greedy requests join a running decode at its next step and leave when they finish (False: whole-request
    # batches of one generate call, as beam search always runs).
    continuous_batching: bool = True
    # Work budgets in beam-tokens: per text, (source tokens + beams x return sequences x max_new_tokens) x
    # (1 + source tokens / 1024) (TranslationRunner.cost).
    max_request_cost: float | None = Field(
        65536,
        gt=0,
        description="beam-tokens one request may ask for; more gets 400. The default admits the largest request "
        "of short texts at default length (32 texts x 8 beams x 200 tokens = 51,200 and a little for the sources) "
        "and 32 texts of 1,021 source tokens decoded greedily for one token, and refuses 32 texts x 8 beams x 8 "
        "returns x 512 tokens (over 1,048,576); None = no budget",
    )
    max_batch_cost: float | None = Field(
        131072, gt=0, description="beam-tokens of the requests decoded in one generate call (a lone request always runs)"
    )
