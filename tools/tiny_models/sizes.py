"""Each architecture's configuration at the sizes this repository builds, in one place (no torch needed).

`TINY`: tools/tiny_models' checkpoints for tests on a CPU. `REAL`: the sizes the services run in production,
and `SMALL`: the same builders at a fraction of the width and depth with the real vocabularies, both built by
tools/gpu_check/models.py (random weights; nothing is downloaded).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """One size of every architecture's configuration (the arguments its config class takes besides the ids
    a tokenizer decides)."""

    name: str
    whisper: dict
    whisper_vocab: int | None  # None: the hand-written vocabulary as it is; else padded to this size
    assistant_decoder_layers: int
    fsmt: dict
    fsmt_vocab: int | None
    fsmt_generation: dict  # beam search settings of the generation config
    speecht5: dict
    hifigan: dict
    unet: dict
    vae: dict
    clip_text: dict
    translation_pairs: tuple[tuple[str, str], ...] = (("en", "de"),)


REAL = Sizes(
    name="real",
    # openai/whisper-large-v2, and the 2-layer decoder of distil-whisper/distil-large-v2 (which reads the main
    # encoder's outputs: its encoder is the teacher's).
    whisper=dict(
        d_model=1280,
        encoder_layers=32,
        decoder_layers=32,
        encoder_attention_heads=20,
        decoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_ffn_dim=5120,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
    ),
    whisper_vocab=51865,
    assistant_decoder_layers=2,
    # facebook/wmt19-en-de ("transformer big").
    fsmt=dict(
        d_model=1024,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=8192,
        decoder_ffn_dim=8192,
        max_position_embeddings=1024,
        scale_embedding=True,
        tie_word_embeddings=False,
        activation_function="relu",
    ),
    fsmt_vocab=42024,
    # wmt19's generation config.
    fsmt_generation=dict(num_beams=5, max_length=200),
    # microsoft/speecht5_tts, speecht5_vc and speecht5_hifigan are the library's default configurations.
    speecht5={},
    hifigan={},
    # stable-diffusion-v1-5/stable-diffusion-v1-5: UNet, VAE and the CLIP ViT-L/14 text encoder.
    unet=dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
    vae=dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
    ),
    clip_text=dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
    ),
)

# tools/tiny_models: the CPU test checkpoints (hand-written vocabularies as they are).
TINY = Sizes(
    name="tiny",
    whisper=dict(
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        # At the default 0.02 the residual stream dominates and greedy decoding repeats one token whatever the
        # audio; larger weights give varied, input-dependent transcripts.
        init_std=0.3,
    ),
    whisper_vocab=None,
    assistant_decoder_layers=1,
    fsmt=dict(
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
    ),
    fsmt_vocab=None,
    fsmt_generation=dict(num_beams=2, max_length=64),
    speecht5=dict(
        hidden_size=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        # Same strides and kernels as the real speech prenet (320x downsampling of 16 kHz audio), fewer channels.
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_mel_bins=80,
        speech_decoder_prenet_units=32,
        speech_decoder_postnet_layers=2,
        speech_decoder_postnet_units=32,
        speaker_embedding_dim=512,  # the x-vector size the real checkpoints expect
    ),
    # With the default 0.01 init the tiny vocoder is silent (~1e-8); 0.15 gives audible noise well below clipping.
    hifigan=dict(model_in_dim=80, upsample_initial_channel=32, initializer_range=0.15),
    # Block types and sizes follow diffusers' own tiny test pipelines; 64 px images (latents of 8: the VAE
    # downsamples by 2 ** (len(block_out_channels) - 1) = 8).
    unet=dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
    vae=dict(
        in_channels=3,
        out_channels=3,
        # Four blocks (three downsamplers) give SD's 8x latent factor and the 4 latent channels SD uses.
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
    ),
    clip_text=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
    ),
)

# The same builders at a fraction of the width and depth (real vocabularies), for tests on a CPU.
SMALL = Sizes(
    name="small",
    whisper={
        **REAL.whisper,
        **dict(
            d_model=64,
            encoder_layers=2,
            decoder_layers=4,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
        ),
    },
    whisper_vocab=REAL.whisper_vocab,
    assistant_decoder_layers=2,
    fsmt={**REAL.fsmt, **TINY.fsmt},
    fsmt_vocab=REAL.fsmt_vocab,
    fsmt_generation=REAL.fsmt_generation,
    speecht5=TINY.speecht5,
    hifigan=dict(upsample_initial_channel=32),
    unet=TINY.unet,
    vae=TINY.vae,
    clip_text={
        **REAL.clip_text,
        **dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=32,
        ),
    },
)
