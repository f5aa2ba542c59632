"""Audio bytes for responses: whole files through the kit's encoder, streams piece by piece, SSE events.

`pcm` is OpenAI's: raw 16-bit signed little-endian mono at 24 kHz, whatever rate the model makes (clients
such as the openai SDK's LocalAudioPlayer play it at 24 kHz without asking). The other formats carry the
model's rate in their headers.

A stream must be playable before its length is known. Raw PCM needs no header. WAV gets a header whose RIFF
and data sizes are 0xFFFFFFFF ("unknown, read to the end"), as ffmpeg and sox write when piping; soundfile,
ffmpeg and browsers read such a file to its end. The concatenated pieces carry the same samples as the
non-streaming response: the 24 kHz resampler runs across the pieces, not per piece.
"""

import base64
import json
import struct
from dataclasses import dataclass

import numpy as np

from services.kit.audio import StreamResampler, encode_audio, resample

PCM_SAMPLE_RATE = 24000
# Formats whose bytes can be sent before the total length is known.
STREAM_FORMATS = ("wav", "pcm")
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm"}
SSE_MEDIA_TYPE = "text/event-stream"
# Raw audio bytes per SSE delta event when a whole file is sent as events.
SSE_DELTA_BYTES = 48 * 1024
_UNKNOWN_SIZE = struct.pack("<I", 0xFFFFFFFF)


def output_rate(fmt: str, sample_rate: int) -> int:
    return PCM_SAMPLE_RATE if fmt == "pcm" else sample_rate


@dataclass(frozen=True)
class EncodedAudio:
    data: bytes
    media_type: str
    sample_rate: int


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> EncodedAudio:
    """A whole audio file in `fmt` (blocking: call it off the event loop)."""
    rate = output_rate(fmt, sample_rate)
    data, media_type = encode_audio(resample(samples, sample_rate, rate), rate, fmt)
    return EncodedAudio(data, media_type, rate)


def wav_stream_header(sample_rate: int) -> bytes:
    """RIFF header of a mono 16-bit PCM WAV file of unknown length."""
    channels, sample_bytes = 1, 2
    block = channels * sample_bytes
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * block, block, 8 * sample_bytes)
    return (
        b"RIFF"
        + _UNKNOWN_SIZE
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + _UNKNOWN_SIZE
    )


class StreamEncoder:
    """The bytes of a wav or pcm stream, one piece per sentence; the first wav piece starts with the header."""

    def __init__(self, fmt: str, sample_rate: int):
        self.sample_rate = output_rate(fmt, sample_rate)
        self.media_type = MEDIA_TYPES[fmt]
        self._resampler = StreamResampler(sample_rate, self.sample_rate)
        self._header = wav_stream_header(self.sample_rate) if fmt == "wav" else b""

    def piece(self, samples: np.ndarray, last: bool) -> bytes:
        """`last` flushes the resampler, whose filter holds back a few milliseconds until the end."""
        resampled = self._resampler.push(samples)
        if last:
            resampled = np.concatenate([resampled, self._resampler.flush()])
        header, self._header = self._header, b""
        return header + (encode_audio(resampled, self.sample_rate, "pcm")[0] if resampled.size else b"")


def sse_delta(audio: bytes) -> bytes:
    """OpenAI's `speech.audio.delta` event: a piece of the audio, base64."""
    return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode("ascii")})


def sse_done(input_tokens: int, output_tokens: int) -> bytes:
    """OpenAI's `speech.audio.done` event, last of the stream, with the request's usage."""
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    return _sse({"type": "speech.audio.done", "usage": usage})


def _sse(event: dict) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
