"""Fixtures for the ASR tests: the tiny Whisper pair's directories and audio (settings: `make_asr_settings` in
tests/conftest.py)."""

import io

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture(scope="session")
def whisper_dirs(models_dir):
    return models_dir / "asr" / "whisper", models_dir / "asr" / "whisper-assistant"


def synth(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """Speech-like audio: a few gliding harmonics under a syllable-rate envelope, plus noise. Every seed differs."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = rng.uniform(90, 260) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(rng.uniform(0.1, 0.5) / k * np.sin(k * phase) for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t)
    audio = 0.6 * voice * envelope + 0.02 * rng.standard_normal(t.size)
    return (audio / max(1.0, np.abs(audio).max())).astype(np.float32)


def encode(samples: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def audio():
    """`audio(seconds, seed)` -> float32 samples at 16 kHz."""
    return synth


@pytest.fixture(scope="session")
def audio_file():
    """`audio_file(seconds, seed, rate=16000, fmt="WAV")` -> the bytes of an audio file."""

    def make(seconds: float, seed: int, rate: int = 16000, fmt: str = "WAV") -> bytes:
        return encode(synth(seconds, seed, rate), rate, fmt)

    return make


@pytest.fixture(scope="session")
def to_file():
    """`to_file(samples, rate=16000, fmt="WAV", subtype=None)` -> the bytes of an audio file."""
    return encode
