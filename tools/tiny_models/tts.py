"""Tiny SpeechT5 text-to-speech, voice conversion and HiFi-GAN vocoder, plus named x-vector voices."""

import io
from pathlib import Path

import numpy as np
import sentencepiece as spm
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
from .common import CHARACTERS, seed_everything, words
from .sizes import TINY

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


def _config(vocab_size: int) -> SpeechT5Config:
    return SpeechT5Config(vocab_size=vocab_size, **TINY.speecht5)


def _save(model, processor: SpeechT5Processor | None, model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
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


def build(out_dir: Path) -> list[Path]:
    tts_dir, vc_dir, vocoder_dir, voices_dir = (out_dir / name for name in MODELS)
    tts_dir.mkdir(parents=True, exist_ok=True)
    processor = _processor(tts_dir)
    config = _config(len(processor.tokenizer))
    seed_everything(200)
    _save(SpeechT5ForTextToSpeech(config), processor, tts_dir)
    seed_everything(201)
    _save(SpeechT5ForSpeechToSpeech(config), processor, vc_dir)
    seed_everything(202)
    _save(SpeechT5HifiGan(SpeechT5HifiGanConfig(**TINY.hifigan)), None, vocoder_dir)
    return [tts_dir, vc_dir, vocoder_dir, build_voices(voices_dir)]
