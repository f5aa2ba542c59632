"""Stable Diffusion (1.5 layout): UNet, VAE, CLIP text encoder and tokenizer, PNDM scheduler, at any of
tools/tiny_models/sizes.py's sizes: TINY for `make models`, REAL and SMALL for tools/gpu_check."""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from . import LAYOUT
from .common import (
    byte_symbols,
    bytes_to_unicode,
    chain_merges,
    end_of_word_vocab,
    seed_everything,
    words,
    write_json,
    write_merges,
)
from .sizes import TINY, Sizes

MODELS = LAYOUT["imagegen"]


def _tokenizer(work: Path) -> CLIPTokenizer:
    """CLIP byte-level BPE: lowercased words, last symbol marked `</w>`, so no merge ever yields a bare `</w>`."""
    spellings = [byte_symbols(w) for w in words("en")]
    merges = chain_merges([[*s[:-1], s[-1] + "</w>"] for s in spellings])
    tokens = [
        *end_of_word_vocab("".join(bytes_to_unicode().values()), merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "vocab.json", {tok: i for i, tok in enumerate(tokens)})
    write_merges(work / "merges.txt", merges, header="#version: 0.2")
    return CLIPTokenizer.from_pretrained(work, model_max_length=77)


def build_stable_diffusion(model_dir: Path, sizes: Sizes = TINY, dtype: torch.dtype = torch.float32) -> None:
    tokenizer = _tokenizer(model_dir / "tokenizer")
    seed_everything(300)
    unet = UNet2DConditionModel(**sizes.unet)
    vae = AutoencoderKL(**sizes.vae)
    # A real size names CLIP's own vocabulary size (the hand-written tokenizer uses its first rows).
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **{"vocab_size": len(tokenizer), **sizes.clip_text},
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # Stable Diffusion 1.5's scheduler configuration.
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    # SD 1.5's file also says clip_sample=false, which DDIM reads when a service swaps schedulers.
    scheduler.register_to_config(clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(dtype=dtype).save_pretrained(model_dir, safe_serialization=True)


def build(out_dir: Path) -> list[Path]:
    model_dir = out_dir / MODELS[0]
    build_stable_diffusion(model_dir)
    return [model_dir]
