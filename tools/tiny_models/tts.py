"""SpeechT5 text-to-speech, voice conversion and HiFi-GAN vocoder, plus named x-vector voices, at any of
tools/tiny_models/sizes.py's sizes: TINY for `make models`, REAL and SMALL for tools/gpu_check."""

import io
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from transformers import (
    SpeechT5Config,
    SpeechT5FeatureExtractor,
    SpeechT5ForSpeechToSpeech,
    SpeechT5ForTextToSpeech,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    SpeechT5Processor,
    SpeechT5Tokenizer,
)

from . import LAYOUT
from .common import CHARACTERS, save_model, seed_everything, words
from .sizes import TINY, Sizes

MODELS = LAYOUT["tts"]
VOICES = ("alloy", "echo", "nova", "shimmer")  # the OpenAI speech API's voice names


def _processor(work: Path) -> SpeechT5Processor:
    """A character-level sentencepiece model like microsoft/speecht5_tts's spm_char.model, trained in-process."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([CHARACTERS, " ".join(words("en", "de", "ru"))]),
        model_writer=model,
        model_type="char",
        vocab_size=len(CHARACTERS) + 5,  # + space marker and the 4 specials below
        hard_vocab_limit=False,
        character_coverage=1.0,
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    vocab_file = work / "spm_char.model"
    vocab_file.write_bytes(model.getvalue())
    return SpeechT5Processor(
        feature_extractor=SpeechT5FeatureExtractor(), tokenizer=SpeechT5Tokenizer(str(vocab_file))
    )


def _save(model, processor: SpeechT5Processor | None, model_dir: Path, dtype: torch.dtype) -> Path:
    save_model(model, model_dir, dtype)
    if processor is not None:
        processor.save_pretrained(model_dir)
    return model_dir


def build_voices(voices_dir: Path) -> Path:
    voices_dir.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(VOICES):
        vector = np.random.default_rng(seed).standard_normal(TINY.speecht5["speaker_embedding_dim"])
        # x-vectors are L2-normalised before SpeechT5 sees them.
        np.save(voices_dir / f"{name}.npy", (vector / np.linalg.norm(vector)).astype(np.float32))
    return voices_dir


def build_speecht5(
    dirs: dict[str, Path], sizes: Sizes = TINY, dtype: torch.dtype = torch.float32
) -> list[Path]:
    """Text-to-speech, voice conversion and HiFi-GAN at `sizes`, the character tokenizer, and the voices;
    `dirs` maps "tts", "vc", "vocoder" and "voices" to their directories."""
    dirs["tts"].mkdir(parents=True, exist_ok=True)
    processor = _processor(dirs["tts"])
    config = SpeechT5Config(vocab_size=len(processor.tokenizer), **sizes.speecht5)
    seed_everything(200)
    _save(SpeechT5ForTextToSpeech(config), processor, dirs["tts"], dtype)
    seed_everything(201)
    _save(SpeechT5ForSpeechToSpeech(config), processor, dirs["vc"], dtype)
    seed_everything(202)
    _save(SpeechT5HifiGan(SpeechT5HifiGanConfig(**sizes.hifigan)), None, dirs["vocoder"], dtype)
    return [dirs["tts"], dirs["vc"], dirs["vocoder"], build_voices(dirs["voices"])]


def build(out_dir: Path) -> list[Path]:
    return build_speecht5(
        {key: out_dir / name for key, name in zip(("tts", "vc", "vocoder", "voices"), MODELS, strict=True)}
    )
