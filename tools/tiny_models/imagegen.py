"""Tiny Stable Diffusion (1.5 layout): UNet, VAE, CLIP text encoder and tokenizer, PNDM scheduler."""

from pathlib import Path

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

MODELS = LAYOUT["imagegen"]
LATENT_SIZE = 8  # 64 px images: the VAE downsamples by 2 ** (len(block_out_channels) - 1) = 8
TEXT_HIDDEN = 32


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


def build(out_dir: Path) -> list[Path]:
    model_dir = out_dir / MODELS[0]
    tokenizer = _tokenizer(model_dir / "tokenizer")
    seed_everything(300)
    # Block types and sizes follow diffusers' own tiny test pipelines.
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # Four blocks (three downsamplers) give SD's 8x latent factor and the 4 latent channels SD uses.
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=LATENT_SIZE * 8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
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
    pipe.save_pretrained(model_dir, safe_serialization=True)
    return [model_dir]
