from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.config import ServiceSettings
from services.kit.precision import ComputeDtype
from services.kit.quantize import Quantize

# What ASR_QUANTIZE=auto does on a CPU (int8 main model or not). bench/bench_quantize.py, real whisper-base,
# 12 held-out English clips, greedy, language=en, 2 cores (load 2.4): int8 1.63x float32's speed (7.0 s vs
# 11.4 s) but identical tokens on only 41.7 % of the clips and WER 11.2 -> 15.7 %. A one-off run with int8
# in the decoder alone (encoder float) gave 91.7 % and 12.7 % at 1.34x. Both fail the bar (>= 95 % identical
# tokens, WER within 0.5 pt): auto keeps float32.
QUANTIZE_AUTO_INT8 = False


class ASRSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ASR_", extra="ignore", protected_namespaces=())

    # Hub ids or local directories. The assistant is a distil-whisper-style decoder (WhisperForCausalLM) that
    # reads the main encoder's outputs, or a smaller full Whisper with the same tokenizer; "" disables it.
    model: str = "openai/whisper-large-v2"
    assistant_model: str = "distil-whisper/distil-large-v2"
    path_choice: Literal["measured", "threshold"] = Field(
        "measured",
        description="how `decoding=auto` picks the assisted or the plain path: `measured` takes the one with the "
        "lower measured seconds per token at the current load (path_choice.py); `threshold` follows "
        "adaptive_threshold",
    )
    path_explore_every: int = Field(
        16,
        ge=2,
        description="with path_choice=measured, the Nth decision at a load level tries the other path, then "
        "twice as far apart while explorations confirm the choice (up to 8N), every Nth again when it changes",
    )
    adaptive_threshold: int = Field(
        4,
        ge=0,
        description="with path_choice=threshold: when more requests than this wait (the batch plus the queue "
        "behind it), a batch decodes together without the assistant; a request decoded alone always uses it",
    )
    quantize: Quantize = Field(
        "auto",
        description="the main model's linear layers: int8 (dynamic, CPU only; ignored on GPU), none, or "
        "auto (int8 on CPU where it measured faithful, see QUANTIZE_AUTO_INT8); the assistant follows "
        "draft_quantize",
    )
    encoder_dtype: ComputeDtype = Field(
        "auto",
        description="what the main encoder computes in on CPU: bfloat16, float32, or auto (bfloat16 where one of "
        "its layers measures at least 1.2x faster so at start-up: CPUs with AMX). The decoder stays float32. "
        "Ignored on GPU and with quantize=int8",
    )
    head_dtype: ComputeDtype = Field(
        "auto",
        description="what the main decoder's vocabulary projection computes in on CPU: bfloat16, float32, or "
        "auto (bfloat16 where it measures at least 1.2x faster so at start-up). The logits stay float32. "
        "Ignored on GPU and with quantize=int8",
    )
    # The assistant's draft (drafting.py): rows of its restricted output head (0 keeps all 51,865), int8
    # weights on CPU, tokens per round and when to end a round early (by default as the assistant's generation
    # config says; whisper-base's assistant on CPU did best with 4-6 tokens and 0.5-0.9, see
    # bench/bench_asr_real.py and the cpu overlay). The transcript never depends on them.
    draft_vocab_size: int = Field(16384, ge=0, description="rows of the draft head; 0 = the full vocabulary")
    draft_quantize: bool = Field(True, description="int8 draft weights on CPU (ignored on GPU)")
    draft_tokens: int | None = Field(
        None, ge=1, description="tokens drafted per round; None = the assistant's num_assistant_tokens"
    )
    draft_confidence: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="end a round once the draft's top probability falls below this (0 = never); None = the "
        "assistant's assistant_confidence_threshold",
    )
    max_audio_seconds: float = Field(1800.0, gt=0, description="longer uploads get 413")
    # Checked from the header before a sample is decoded: a file claiming 5 MHz would otherwise cost gigabytes.
    min_sample_rate: int = Field(8000, ge=1, description="audio at a lower sample rate gets 400")
    max_sample_rate: int = Field(192000, ge=1, description="audio at a higher sample rate gets 400")
    max_channels: int = Field(8, ge=1, description="audio with more channels gets 400")
    max_stream_messages: int = Field(
        200_000, ge=1, description="a TranscribeStream call sending more messages than this is cut off"
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="tokens per 30 s window; None keeps the model's limit (448 for Whisper)"
    )
    max_prompt_chars: int = Field(1000, ge=0)
    # OpenAI Whisper's temperature fallback (transcribe.py): a window whose text compresses better than
    # `compression_ratio_threshold` (a repetition loop) or whose tokens average a log-probability below
    # `logprob_threshold` is decoded again at the next temperature; a window where <|nospeech|> is more likely than
    # `no_speech_threshold` and the tokens are improbable is judged silent and dropped. OpenAI's Whisper tries
    # (0.0, 0.2, 0.4, 0.6, 0.8, 1.0). Off by default: every window is decoded once at the request's temperature, so
    # greedy transcripts are reproducible and the assisted and plain paths agree token for token.
    fallback_temperatures: tuple[Annotated[float, Field(ge=0, le=1)], ...] = Field(
        (),
        description="temperatures tried in turn (those above the request's) when a window fails the thresholds; "
        "empty = no fallback and no silence skipping, e.g. [0.2, 0.4, 0.6, 0.8, 1.0] for OpenAI's behaviour",
    )
    compression_ratio_threshold: float | None = Field(2.4, gt=0, description="with fallback temperatures set")
    logprob_threshold: float | None = Field(-1.0, le=0, description="with fallback temperatures set")
    no_speech_threshold: float | None = Field(0.6, ge=0, le=1, description="with fallback temperatures set")
    continuous_batching: bool = Field(
        True,
        description="short, greedy, plain-path requests join a running decode at the next token and leave when "
        "they finish (iteration-level batching); false decodes every batch whole-request",
    )
    # Dynamic batching is the signal the adaptive path reads, so allow batches beyond the threshold.
    max_batch_size: int = Field(16, ge=1)
    # OpenAI's upload limit for audio files.
    max_body_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    # Work budgets in audio-second-tokens: seconds of audio x the tokens a 30 s window may take (max_new_tokens,
    # else the model's limit: 448 for Whisper).
    max_request_cost: float | None = Field(
        1800 * 448,
        gt=0,
        description="audio-second-tokens (seconds x tokens per 30 s window) one request may cost; more gets 400. "
        "The default, 806,400, admits a 30-minute upload at Whisper's full 448 tokens a window; None = no budget",
    )
    max_batch_cost: float | None = Field(
        1800 * 448,
        gt=0,
        description="audio-second-tokens decoded in one batch: 16 clips of 30 s fit together (215,040), a "
        "30-minute clip runs alone (a lone request always runs)",
    )
