"""Whisper plus a distil-whisper-style decoder-only assistant (WhisperForCausalLM) sharing its encoder, at any
of tools/tiny_models/sizes.py's sizes: TINY for `make models`, REAL and SMALL for tools/gpu_check."""

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
    filler_pieces,
    save_model,
    seed_everything,
    words,
    write_json,
    write_merges,
)
from .sizes import TINY, Sizes

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
TIMESTAMPS = tuple(f"<|{i * 0.02:.2f}|>" for i in range(1501))
# Scale of the residual outputs of the main decoder's layers the assistant does not copy, and of the filler
# pieces' output rows. A trained distil-whisper student (initialised from the teacher's first and last decoder
# layers) agrees with its teacher on most tokens and a trained head rarely picks rare pieces; random weights do
# neither, and assisted decoding would then draft nothing the main model accepts (~4 tokens accepted per main
# pass at this scale). Compute is unchanged: only values shrink.
ASSISTANT_AGREEMENT = 0.003
FILLER_LOGIT_SCALE = 0.25


def whisper_tokenizer(model_dir: Path, vocab_size: int | None) -> tuple[WhisperTokenizer, range]:
    """GPT-2 byte-level BPE (every byte is a token, common words merged as Ġword) with Whisper's special and
    timestamp tokens; with `vocab_size`, filler pieces before <|endoftext|> so that the ids line up as in the
    real multilingual checkpoints. Returns the tokenizer and the filler ids."""
    merges = chain_merges([byte_symbols(f" {w}") for w in words("en", "de", "ru", capitalized=True)])
    pieces = list(dict.fromkeys([*bytes_to_unicode().values(), *(a + b for a, b in merges)]))
    word_pieces = len(pieces)
    if vocab_size is not None:
        added = 1 + len(SPECIALS) + len(TIMESTAMPS)  # <|endoftext|>, specials, timestamps
        pieces += filler_pieces(vocab_size - added - len(pieces), set(pieces), prefix="Ġ")
    vocab = {piece: i for i, piece in enumerate(pieces)}
    vocab["<|endoftext|>"] = len(vocab)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_json(model_dir / "vocab.json", vocab)
    write_merges(model_dir / "merges.txt", merges, header="#version: 0.2")
    tokenizer = WhisperTokenizer.from_pretrained(model_dir, pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"extra_special_tokens": list(SPECIALS)})
    # Timestamps are plain added tokens above the last special id, as in the real checkpoints.
    tokenizer.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False) for t in TIMESTAMPS])
    return tokenizer, range(word_pieces, len(pieces))


def build_whisper(
    main_dir: Path, assistant_dir: Path, sizes: Sizes = TINY, dtype: torch.dtype = torch.float32
) -> None:
    tokenizer, filler_ids = whisper_tokenizer(main_dir, sizes.whisper_vocab)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (*SPECIALS, "<|endoftext|>", "Ġ")}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    timestamp_ids = range(no_ts + 1, no_ts + 1 + len(TIMESTAMPS))
    # Control and language tokens never belong inside a transcript. Language detection reads raw logits, so
    # suppressing them during generation does not break `language=None`.
    suppress = [ids[t] for t in SPECIALS]
    begin_suppress = [ids["Ġ"], eot]
    seed_everything(100)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        **sizes.whisper,
    )
    main = WhisperForConditionalGeneration(config).eval()
    decoder = main.model.decoder
    # distil-whisper initialises its student decoder from the teacher's first and last layers (a one-layer
    # student: the last); the layers it does not copy become nearly pass-throughs.
    copied = [decoder.layers[0], decoder.layers[-1]][-sizes.assistant_decoder_layers :]
    with torch.no_grad():
        for layer in decoder.layers:
            if not any(layer is kept for kept in copied):
                for proj in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                    proj.weight.mul_(ASSISTANT_AGREEMENT)
        # The output projection is tied to these rows.
        decoder.embed_tokens.weight[filler_ids.start : filler_ids.stop].mul_(FILLER_LOGIT_SCALE)
    main.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        max_length=config.max_target_positions,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=no_ts,
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        alignment_heads=[[config.decoder_layers - 1, 0], [config.decoder_layers - 1, 1]],
        # Random weights love timestamp tokens. Suppressing them outright makes `return_timestamps=True` force
        # a timestamp out of all -inf logits (garbage, no timestamps at all), so bias them down instead.
        sequence_bias=[[[t], TIMESTAMP_BIAS] for t in timestamp_ids],
    )
    seed_everything(101)
    assistant = WhisperForCausalLM(
        WhisperConfig(**{**config.to_dict(), "decoder_layers": sizes.assistant_decoder_layers})
    ).eval()
    student = assistant.model.decoder
    with torch.no_grad():
        student.embed_tokens.load_state_dict(decoder.embed_tokens.state_dict())
        student.embed_positions.load_state_dict(decoder.embed_positions.state_dict())
        for target, source in zip(student.layers, copied, strict=True):
            target.load_state_dict(source.state_dict())
        student.layer_norm.load_state_dict(decoder.layer_norm.state_dict())
    assistant.generation_config = GenerationConfig(
        **main.generation_config.to_diff_dict(),
        # Random weights are rarely confident: a threshold of 0 and a constant 8-token draft make it really draft.
        assistant_confidence_threshold=0.0,
        num_assistant_tokens=8,
        num_assistant_tokens_schedule="constant",
    )
    save_model(main, main_dir, dtype)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer=tokenizer
    ).save_pretrained(main_dir)
    save_model(assistant, assistant_dir, dtype)


def build(out_dir: Path) -> list[Path]:
    main_dir, assistant_dir = (out_dir / name for name in MODELS)
    build_whisper(main_dir, assistant_dir)
    return [main_dir, assistant_dir]
