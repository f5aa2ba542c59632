"""Audio in and out for services that take or return sound (ASR, TTS, voice conversion).

Decoding and encoding go through libsndfile (the `soundfile` package), resampling through scipy's
polyphase filter, so every service accepts the same formats and refuses bad audio the same way.
"""

import io
from math import gcd

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from .errors import InvalidArgument, PayloadTooLarge, UnsupportedMediaType

# Container formats a client is likely to send; MP3 only where the installed libsndfile has it.
_INPUT_FORMATS = ("WAV", "FLAC", "OGG", "MP3")

# (libsndfile format, subtype, media type) per output name. Opus and MP3 need libsndfile >= 1.0.29 / 1.1.
_OUTPUT_FORMATS = {
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "pcm": ("RAW", "PCM_16", "audio/pcm"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
}
# The encoders refuse other rates; audio at any other rate is resampled to the last (highest) one.
_ENCODER_RATES = {
    "mp3": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    "opus": (8000, 12000, 16000, 24000, 48000),
}


def readable_formats() -> list[str]:
    available = sf.available_formats()
    return [fmt for fmt in _INPUT_FORMATS if fmt in available]


def supported_output_formats() -> list[str]:
    available = sf.available_formats()
    return [
        name
        for name, (fmt, subtype, _) in _OUTPUT_FORMATS.items()
        if fmt in available and subtype in sf.available_subtypes(fmt)
    ]


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling with scipy's anti-aliasing FIR filter; a no-op at equal rates."""
    if from_rate == to_rate:
        return samples
    divisor = gcd(from_rate, to_rate)
    return resample_poly(samples, to_rate // divisor, from_rate // divisor).astype(np.float32)


def decode_audio(
    data: bytes,
    *,
    sample_rate: int = 16000,
    max_seconds: float | None = None,
    filename: str | None = None,
) -> np.ndarray:
    """Any readable audio file -> float32 mono samples in [-1, 1] at `sample_rate`."""
    name = f" '{filename}'" if filename else ""
    if not data:
        raise InvalidArgument(f"audio file{name} is empty", field="file")
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            source_rate, frames = audio.samplerate, audio.frames
            # Check the header's duration before decoding, so an hour-long upload costs nothing.
            if max_seconds is not None and frames / source_rate > max_seconds:
                raise PayloadTooLarge(
                    f"audio{name} is {frames / source_rate:.1f} s long; the limit is {max_seconds:g} s",
                    field="file",
                )
            samples = audio.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)  # without the BytesIO repr
        raise UnsupportedMediaType(
            f"could not decode audio{name} ({reason}); readable formats: {', '.join(readable_formats())}",
            field="file",
        ) from exc
    if samples.shape[0] == 0:
        raise InvalidArgument(f"audio{name} contains no samples", field="file")
    if max_seconds is not None and samples.shape[0] / source_rate > max_seconds:
        # Headers of some formats (MP3) only estimate the length; the decoded length is the truth.
        raise PayloadTooLarge(
            f"audio{name} is {samples.shape[0] / source_rate:.1f} s long; the limit is {max_seconds:g} s",
            field="file",
        )
    if not np.isfinite(samples).all():
        raise InvalidArgument(f"audio{name} contains NaN or infinite samples", field="file")
    mono = samples.mean(axis=1)
    mono = resample(mono, source_rate, sample_rate)
    if mono.size == 0:
        raise InvalidArgument(f"audio{name} is shorter than one sample at {sample_rate} Hz", field="file")
    # Float files may exceed full scale and the resampling filter may ring past it.
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def decode_pcm16(
    data: bytes, source_rate: int, *, sample_rate: int = 16000, max_seconds: float | None = None
) -> np.ndarray:
    """Raw 16-bit little-endian mono PCM (what a microphone stream carries) -> float32 samples at `sample_rate`."""
    if not data:
        raise InvalidArgument("audio stream is empty", field="audio")
    if len(data) % 2:
        raise InvalidArgument(f"raw PCM needs whole 16-bit samples; got {len(data)} bytes", field="audio")
    if not 1000 <= source_rate <= 384000:
        raise InvalidArgument(f"sample rate {source_rate} Hz is outside 1000-384000 Hz", field="sample_rate")
    duration = len(data) / 2 / source_rate
    if max_seconds is not None and duration > max_seconds:
        raise PayloadTooLarge(
            f"audio is {duration:.1f} s long; the limit is {max_seconds:g} s", field="audio"
        )
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return np.clip(resample(samples, source_rate, sample_rate), -1.0, 1.0).astype(np.float32, copy=False)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> tuple[bytes, str]:
    """Mono float samples -> (file bytes, media type) in one of `supported_output_formats()`."""
    supported = supported_output_formats()
    if fmt not in supported:
        raise InvalidArgument(
            f"unsupported audio format '{fmt}'; supported: {', '.join(supported)}", field="response_format"
        )
    container, subtype, media_type = _OUTPUT_FORMATS[fmt]
    samples = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    rates = _ENCODER_RATES.get(fmt)
    if rates and sample_rate not in rates:
        samples, sample_rate = np.clip(resample(samples, sample_rate, rates[-1]), -1.0, 1.0), rates[-1]
    buffer = io.BytesIO()
    extra = {"endian": "LITTLE"} if container == "RAW" else {}
    sf.write(buffer, samples, sample_rate, format=container, subtype=subtype, **extra)
    return buffer.getvalue(), media_type
