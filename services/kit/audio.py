"""Audio in and out for services that take or return sound (ASR, TTS, voice conversion).

Decoding and encoding go through libsndfile (the `soundfile` package), resampling through libsoxr (`soxr`),
so every service accepts the same formats and refuses bad audio the same way. libsndfile cannot write AAC:
ADTS AAC goes through FFmpeg's native encoder (PyAV, whose wheel bundles FFmpeg) where PyAV is installed (the
tts extra; imported on first use, so other services neither need nor load it). Decoding is bounded before
anything is allocated: the header's sample rate, channel count and length are checked first, then the
samples are read in fixed-size blocks, folded to mono and resampled block by block, so neither a lying
header nor a tiny file that decodes to hours of audio can take more memory than the duration limit allows.
Services call `decode_audio` through `services.kit.decoding.run_decoding`: decoding has threads of its own.
"""

import importlib.util
import io
from functools import cache

import numpy as np
import soundfile as sf
import soxr

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
    "aac": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
}
# ADTS: the self-framing AAC stream (a header per frame) that OpenAI's `aac` returns.
_AAC_MEDIA_TYPE = "audio/aac"
_AAC_BIT_RATE = 64000  # mono speech

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_CHANNELS = 8
# Decoding work (frames x channels) per file whatever the duration limit, e.g. 30 minutes of 48 kHz in 4 channels.
MAX_DECODED_SAMPLES = 400_000_000
# Samples (frames x channels) read from libsndfile at a time: 4 MiB of float32.
_BLOCK_SAMPLES = 1 << 20
# libsndfile's frame count when the header does not say (e.g. a FLAC stream written without seeking back).
_UNKNOWN_FRAMES = 2**63 - 1


def readable_formats() -> list[str]:
    available = sf.available_formats()
    return [fmt for fmt in _INPUT_FORMATS if fmt in available]


def supported_output_formats() -> list[str]:
    available = sf.available_formats()
    names = [
        name
        for name, (fmt, subtype, _) in _OUTPUT_FORMATS.items()
        if fmt in available and subtype in sf.available_subtypes(fmt)
    ]
    return names + (["aac"] if _aac_encoder_available() else [])


@cache
def _aac_encoder_available() -> bool:
    if importlib.util.find_spec("av") is None:
        return False
    import av

    try:
        av.codec.Codec("aac", "w")
    except av.error.FFmpegError:  # an FFmpeg built without its AAC encoder
        return False
    return True


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 samples at another rate (libsoxr, high quality); a no-op at equal rates."""
    if from_rate == to_rate:
        return samples
    return soxr.resample(np.ascontiguousarray(samples, dtype=np.float32), from_rate, to_rate)


class StreamResampler:
    """Resamples audio that arrives in pieces (a response streamed sentence by sentence): the pieces it returns,
    `flush()` included, join into exactly what `resample` makes of the whole. The filter holds back a few
    milliseconds of output until the next piece or the flush."""

    def __init__(self, from_rate: int, to_rate: int):
        self._stream = (
            soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32") if from_rate != to_rate else None
        )

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        return self._stream.resample_chunk(samples) if self._stream else samples

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.empty(0, dtype=np.float32)
        return self._stream.resample_chunk(np.empty(0, dtype=np.float32), last=True)


def check_sample_rate(rate: int, min_rate: int, max_rate: int, what: str = "audio", field: str = "file") -> None:
    if not min_rate <= rate <= max_rate:
        raise InvalidArgument(
            f"{what} has a sample rate of {rate} Hz; accepted rates are {min_rate}-{max_rate} Hz", field=field
        )


def decode_audio(
    data: bytes,
    *,
    sample_rate: int = 16000,
    max_seconds: float | None = None,
    filename: str | None = None,
    min_rate: int = MIN_SAMPLE_RATE,
    max_rate: int = MAX_SAMPLE_RATE,
    max_channels: int = MAX_CHANNELS,
) -> np.ndarray:
    """Any readable audio file -> float32 mono samples in [-1, 1] at `sample_rate`.

    Files whose header gives a rate outside [min_rate, max_rate] or more than `max_channels` channels get 400
    before a sample is read; audio longer than `max_seconds` (by its header or once decoded) gets 413.
    """
    name = f" '{filename}'" if filename else ""
    if not data:
        raise InvalidArgument(f"audio file{name} is empty", field="file")
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            mono = _read_mono(audio, name, sample_rate, max_seconds, min_rate, max_rate, max_channels)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)  # without the BytesIO repr
        raise UnsupportedMediaType(
            f"could not decode audio{name} ({reason}); readable formats: {', '.join(readable_formats())}",
            field="file",
        ) from exc
    except MemoryError as exc:
        raise PayloadTooLarge(
            f"audio{name} is too large to decode in the memory this server has; send shorter audio", field="file"
        ) from exc
    if mono.size == 0:
        raise InvalidArgument(f"audio{name} is shorter than one sample at {sample_rate} Hz", field="file")
    # Float files may exceed full scale and the resampling filter may ring past it.
    return np.clip(mono, -1.0, 1.0, out=mono)


def _read_mono(
    audio: sf.SoundFile,
    name: str,
    sample_rate: int,
    max_seconds: float | None,
    min_rate: int,
    max_rate: int,
    max_channels: int,
) -> np.ndarray:
    source_rate, channels, frames = audio.samplerate, audio.channels, audio.frames
    check_sample_rate(source_rate, min_rate, max_rate, f"audio{name}")
    if channels > max_channels:
        raise InvalidArgument(
            f"audio{name} has {channels} channels; at most {max_channels} are accepted", field="file"
        )
    # The header's length is checked first, so that an hour-long upload costs nothing; the decoded length is
    # then counted block by block, because some headers only estimate it (MP3) or do not say (streamed FLAC).
    max_frames = MAX_DECODED_SAMPLES // channels
    if max_seconds is not None:
        max_frames = min(max_frames, int(max_seconds * source_rate))
    if frames != _UNKNOWN_FRAMES and frames > max_frames:
        raise _too_long(name, frames, source_rate, channels, max_seconds)
    block_frames = max(1, _BLOCK_SAMPLES // channels)
    block = np.empty((block_frames, channels), dtype=np.float32)
    resampler = (
        soxr.ResampleStream(source_rate, sample_rate, 1, dtype="float32") if source_rate != sample_rate else None
    )
    pieces, decoded = [], 0
    while True:
        read = audio.read(frames=block_frames, dtype="float32", always_2d=True, out=block)
        if len(read) == 0:
            break
        decoded += len(read)
        if decoded > max_frames:
            raise _too_long(name, decoded, source_rate, channels, max_seconds, at_least=True)
        if not np.isfinite(read).all():
            raise InvalidArgument(f"audio{name} contains NaN or infinite samples", field="file")
        mono = read[:, 0] if channels == 1 else read.mean(axis=1, dtype=np.float32)
        # The block buffer is reused: keep a copy when nothing else made one.
        pieces.append(resampler.resample_chunk(mono) if resampler else mono.copy())
        if len(read) < block_frames:
            break
    if decoded == 0:
        raise InvalidArgument(f"audio{name} contains no samples", field="file")
    if resampler:
        pieces.append(resampler.resample_chunk(np.empty(0, dtype=np.float32), last=True))
    return np.concatenate(pieces)


def _too_long(
    name: str, frames: int, rate: int, channels: int, max_seconds: float | None, at_least: bool = False
) -> PayloadTooLarge:
    more = "more than " if at_least else ""
    if max_seconds is not None and frames / rate > max_seconds:
        return PayloadTooLarge(
            f"audio{name} is {more}{frames / rate:.1f} s long; the limit is {max_seconds:g} s", field="file"
        )
    return PayloadTooLarge(
        f"audio{name} decodes to {more}{frames * channels} samples (frames x channels); "
        f"the limit is {MAX_DECODED_SAMPLES}",
        field="file",
    )


def decode_pcm16(
    data: bytes,
    source_rate: int,
    *,
    sample_rate: int = 16000,
    max_seconds: float | None = None,
    min_rate: int = MIN_SAMPLE_RATE,
    max_rate: int = MAX_SAMPLE_RATE,
) -> np.ndarray:
    """Raw 16-bit little-endian mono PCM (what a microphone stream carries) -> float32 samples at `sample_rate`."""
    if not data:
        raise InvalidArgument("audio stream is empty", field="audio")
    if len(data) % 2:
        raise InvalidArgument(f"raw PCM needs whole 16-bit samples; got {len(data)} bytes", field="audio")
    check_sample_rate(source_rate, min_rate, max_rate, "raw PCM", field="pcm_sample_rate")
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
    samples = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    rates = _ENCODER_RATES.get(fmt)
    if rates and sample_rate not in rates:
        samples, sample_rate = np.clip(resample(samples, sample_rate, rates[-1]), -1.0, 1.0), rates[-1]
    if fmt == "aac":
        return _encode_adts_aac(samples, sample_rate), _AAC_MEDIA_TYPE
    container, subtype, media_type = _OUTPUT_FORMATS[fmt]
    buffer = io.BytesIO()
    extra = {"endian": "LITTLE"} if container == "RAW" else {}
    sf.write(buffer, samples, sample_rate, format=container, subtype=subtype, **extra)
    return buffer.getvalue(), media_type


def _encode_adts_aac(samples: np.ndarray, sample_rate: int) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="adts") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        stream.bit_rate = _AAC_BIT_RATE
        packets = []
        if samples.size:  # FFmpeg's resampler fails on an empty frame
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            # The encoder cuts the samples into its 1024-sample frames; encode(None) drains the last ones.
            packets += stream.encode(frame)
        for packet in (*packets, *stream.encode(None)):
            container.mux(packet)
    return buffer.getvalue()
