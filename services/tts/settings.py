import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.kit.config import ServiceSettings
from services.kit.quantize import Quantize

# What TTS_QUANTIZE=auto does on a CPU (int8 acoustic model or not). bench/bench_quantize.py, 2 cores (load
# 1.6), tiny random-weight SpeechT5, 12 sentences: int8 0.41x float32's speed (8.18 s vs 3.37 s) with a mean
# log-mel difference of 0.015 (the log-mel's own mean magnitude 1.37). Slower, and a random model's
# spectrogram says nothing about intelligibility: none until real weights are measured.
QUANTIZE_AUTO_INT8 = False


class TTSSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TTS_", extra="ignore", protected_namespaces=())

    # Hub ids or local directories (safetensors only).
    model: str = "microsoft/speecht5_tts"
    vocoder: str = "microsoft/speecht5_hifigan"
    vc_model: str = "microsoft/speecht5_vc"
    quantize: Quantize = Field(
        "auto",
        description="the acoustic model's linear layers: int8 (dynamic, CPU only; ignored on GPU), none, or "
        "auto (int8 on CPU where it measured faithful, see QUANTIZE_AUTO_INT8)",
    )
    voices_dir: Path = Field(
        Path("voices"), description="named voices: <name>.npy, one 512-dim x-vector each"
    )
    default_voice: str | None = Field(
        None, description="voice (or alias) of requests that name none; default: first by name"
    )
    voice_aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="extra voice names, each selecting an installed voice: 'ash=bdl,coral=slt' or a JSON object. "
        "OpenAI's voice names left unmapped (and not installed) are spread over the installed voices in name "
        "order, so every OpenAI name works whatever the voices directory holds",
    )
    # Names OpenAI clients send as `model`; they all select the SpeechT5 model.
    model_aliases: tuple[str, ...] = (
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",
        "gpt-4o-mini-tts-2025-03-20",
        "gpt-4o-mini-tts-2025-12-15",
    )

    # SpeechT5 stops a sentence when the summed stop probabilities of a step reach the threshold; the ratios
    # bound its length in spectrogram frames per input token (text) or per encoder frame (conversion).
    # The defaults are the library's; random tiny weights need threshold > 2 and min = max ratio.
    stop_threshold: float = Field(0.5, gt=0)
    min_len_ratio: float = Field(0.0, ge=0)
    max_len_ratio: float = Field(20.0, gt=0)
    vc_stop_threshold: float = Field(0.5, gt=0)
    vc_min_len_ratio: float = Field(0.0, ge=0)
    vc_max_len_ratio: float = Field(20.0, gt=0)

    max_input_chars: int = Field(4096, ge=1, description="longer input gets 400 (OpenAI's limit)")
    max_sentence_chars: int = Field(300, ge=20, description="longer sentences are cut at commas or spaces")
    sentence_pause_ms: float = Field(250.0, ge=0, description="silence between sentences at speed 1")
    max_rows_per_call: int = Field(16, ge=1, description="sentences (or conversions) in one generate call")
    continuous_batching: bool = Field(
        True,
        description="speech sentences join a running decode at its next step and leave it when they stop "
        "(voice conversion always runs whole batches); false: each batch decodes to its end",
    )
    default_response_format: str = "mp3"  # OpenAI's default
    max_instructions_chars: int = Field(
        4096, ge=0, description="longer `instructions` get 400 (never applied)"
    )
    max_conversion_seconds: float = Field(30.0, gt=0, description="longer voice-conversion input gets 413")
    # Work budgets: characters of text to speak; seconds of speech to convert (a batcher each).
    max_request_cost: float | None = Field(
        4096,
        gt=0,
        description="characters one speech request may ask for; more gets 400. The default admits OpenAI's "
        "4096-character input; None = no budget",
    )
    max_batch_cost: float | None = Field(
        16384, gt=0, description="characters synthesized in one batch (a lone request always runs)"
    )
    max_conversion_cost: float | None = Field(
        30.0,
        gt=0,
        description="seconds of input one voice conversion may cost; more gets 400. The default admits the "
        "longest upload (max_conversion_seconds); None = no budget",
    )
    max_conversion_batch_cost: float | None = Field(
        120.0, gt=0, description="seconds of input converted in one batch (a lone request always runs)"
    )
    # Checked from the upload's header before a sample is decoded.
    min_sample_rate: int = Field(8000, ge=1, description="voice-conversion input at a lower rate gets 400")
    max_sample_rate: int = Field(192000, ge=1, description="voice-conversion input at a higher rate gets 400")
    max_channels: int = Field(8, ge=1, description="voice-conversion input with more channels gets 400")

    @field_validator("voice_aliases", mode="before")
    @classmethod
    def _alias_pairs(cls, value):
        """`alias=voice,alias=voice` or a JSON object, as an environment variable carries it."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        pairs = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            alias, separator, voice = item.partition("=")
            if not separator or not alias.strip() or not voice.strip():
                raise ValueError(f"expected alias=voice, got {item!r}")
            pairs[alias.strip()] = voice.strip()
        return pairs
