"""Tiny multilingual Whisper plus a distil-whisper-style one-layer WhisperForCausalLM assistant."""

from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForCausalLM,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from . import LAYOUT
from .common import (
    byte_symbols,
    bytes_to_unicode,
    chain_merges,
    seed_everything,
    words,
    write_json,
    write_merges,
)
from .sizes import TINY

MODELS = LAYOUT["asr"]
TASKS = ("<|translate|>", "<|transcribe|>")
# Order matters: the tokenizer finds a language token as sot + 1 + its index in LANGUAGES.
SPECIALS = (
    "<|startoftranscript|>",
    *(f"<|{code}|>" for code in LANGUAGES),
    *TASKS,
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)
TIMESTAMP_BIAS = -4.0  # -3 still leaks timestamps into plain transcripts now and then
ASSISTANT_AGREEMENT = 0.003  # scale of decoder layer 0's outputs: ~4 tokens accepted per main pass
TIMESTAMPS = tuple(f"<|{i * 0.02:.2f}|>" for i in range(1501))


def _write_bpe(model_dir: Path) -> None:
    """GPT-2 byte-level BPE: every byte is a token, common words (space-prefixed, as Ġword) are merged."""
    merges = chain_merges([byte_symbols(f" {w}") for w in words("en", "de", "ru", capitalized=True)])
    pieces = [*bytes_to_unicode().values(), *(a + b for a, b in merges)]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(pieces))}
    vocab["<|endoftext|>"] = len(vocab)
    write_json(model_dir / "vocab.json", vocab)
    write_merges(model_dir / "merges.txt", merges, header="#version: 0.2")


def _tokenizer(model_dir: Path) -> WhisperTokenizer:
    _write_bpe(model_dir)
    tokenizer = WhisperTokenizer.from_pretrained(model_dir, pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"extra_special_tokens": list(SPECIALS)})
    # Timestamps are plain added tokens above the last special id, as in the real checkpoints.
    tokenizer.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False) for t in TIMESTAMPS])
    return tokenizer


def build_whisper(model_dir: Path) -> WhisperForConditionalGeneration:
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(model_dir)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (*SPECIALS, "<|endoftext|>", "Ġ")}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    timestamp_ids = list(range(no_ts + 1, no_ts + 1 + len(TIMESTAMPS)))
    # Control and language tokens never belong inside a transcript. Language detection reads raw logits, so
    # suppressing them during generation does not break `language=None`.
    suppress = [ids[t] for t in SPECIALS]
    begin_suppress = [ids["Ġ"], eot]
    seed_everything(100)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        **TINY.whisper,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
    )
    model = WhisperForConditionalGeneration(config).eval()
    # Make the first decoder layer nearly a pass-through so that the one-layer assistant, which copies the last
    # layer, drafts tokens the main model accepts (distil-whisper keeps the teacher's first and last layers).
    first = model.model.decoder.layers[0]
    with torch.no_grad():
        for proj in (first.self_attn.out_proj, first.encoder_attn.out_proj, first.fc2):
            proj.weight.mul_(ASSISTANT_AGREEMENT)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        max_length=448,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=no_ts,
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        alignment_heads=[[1, 0], [1, 1]],
        # Random weights love timestamp tokens. Suppressing them outright makes `return_timestamps=True` force
        # a timestamp out of all -inf logits (garbage, no timestamps at all), so bias them down instead.
        sequence_bias=[[[t], TIMESTAMP_BIAS] for t in timestamp_ids],
    )
    model.save_pretrained(model_dir, safe_serialization=True)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    ).save_pretrained(model_dir)
    return model


def build_assistant(model_dir: Path, main: WhisperForConditionalGeneration) -> None:
    seed_everything(101)
    config = WhisperConfig(**{**main.config.to_dict(), "decoder_layers": TINY.assistant_decoder_layers})
    assistant = WhisperForCausalLM(config).eval()
    # distil-whisper initialises the student decoder from the teacher's: copy embeddings, the last layer and
    # the final norm so drafts agree with the main model often enough for speculative decoding to pay off.
    src, dst = main.model.decoder, assistant.model.decoder
    with torch.no_grad():
        dst.embed_tokens.load_state_dict(src.embed_tokens.state_dict())
        dst.embed_positions.load_state_dict(src.embed_positions.state_dict())
        dst.layers[0].load_state_dict(src.layers[-1].state_dict())
        dst.layer_norm.load_state_dict(src.layer_norm.state_dict())
    assistant.generation_config = GenerationConfig(
        **main.generation_config.to_diff_dict(),
        # Random weights are rarely confident: a threshold of 0 and a constant 8-token draft make it really draft.
        assistant_confidence_threshold=0.0,
        num_assistant_tokens=8,
        num_assistant_tokens_schedule="constant",
    )
    assistant.save_pretrained(model_dir, safe_serialization=True)


def build(out_dir: Path) -> list[Path]:
    main_dir, assistant_dir = (out_dir / name for name in MODELS)
    main = build_whisper(main_dir)
    build_assistant(assistant_dir, main)
    return [main_dir, assistant_dir]
