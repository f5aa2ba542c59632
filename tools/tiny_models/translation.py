"""FSMT (facebook/wmt19-*) translation checkpoints with hand-written fairseq-style BPE files, at any of
tools/tiny_models/sizes.py's sizes: TINY for `make models`, REAL and SMALL for tools/gpu_check."""

from pathlib import Path

import torch
from transformers import FSMTConfig, FSMTForConditionalGeneration, FSMTTokenizer, GenerationConfig

from . import LAYOUT
from .common import (
    CHARACTERS,
    chain_merges,
    end_of_word_symbols,
    end_of_word_vocab,
    filler_pieces,
    save_model,
    seed_everything,
    words,
    write_json,
    write_merges,
)
from .sizes import TINY, Sizes

PAIRS = (("en", "de"), ("de", "en"), ("en", "ru"), ("ru", "en"))
MODELS = LAYOUT["translation"]
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq dictionary order: bos 0, pad 1, eos 2, unk 3


def _write_tokenizer_files(work: Path, src: str, tgt: str, vocab_size: int | None) -> dict[str, Path]:
    """Fairseq-style BPE of common words; with `vocab_size`, padded with filler pieces to a real checkpoint's."""
    merges = chain_merges([end_of_word_symbols(w) for w in words(src, tgt, capitalized=True)])
    # Both sides share the merges, so each side needs every merge result or it would encode to <unk>.
    pieces = [*SPECIALS, *end_of_word_vocab(CHARACTERS, merges)]
    if vocab_size is not None:
        pieces += filler_pieces(vocab_size - len(pieces), set(pieces), suffix="</w>")
    vocab = {tok: i for i, tok in enumerate(pieces)}
    files = {"src_vocab_file": work / "vocab-src.json", "tgt_vocab_file": work / "vocab-tgt.json"}
    for path in files.values():
        write_json(path, vocab)
    files["merges_file"] = work / "merges.txt"
    write_merges(files["merges_file"], merges)
    return files


def build_pair(
    model_dir: Path, src: str, tgt: str, seed: int, sizes: Sizes = TINY, dtype: torch.dtype = torch.float32
) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = FSMTTokenizer(
        langs=[src, tgt], **_write_tokenizer_files(model_dir, src, tgt, sizes.fsmt_vocab)
    )
    seed_everything(seed)
    config = FSMTConfig(
        langs=[src, tgt],
        src_vocab_size=tokenizer.src_vocab_size,
        tgt_vocab_size=tokenizer.tgt_vocab_size,
        **sizes.fsmt,
    )
    model = FSMTForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        early_stopping=True,
        **sizes.fsmt_generation,
    )
    save_model(model, model_dir, dtype)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def build(out_dir: Path) -> list[Path]:
    return [
        build_pair(out_dir / name, src, tgt, seed)
        for seed, (name, (src, tgt)) in enumerate(zip(MODELS, PAIRS, strict=True))
    ]
