"""Audio bytes for responses: whole files through the kit's encoder, streams as chunks.

A stream must be playable before its length is known. Raw PCM (s16le) needs no header. WAV gets a
header whose RIFF and data sizes are 0xFFFFFFFF ("unknown, read to the end"), as ffmpeg and sox write
when piping; soundfile, ffmpeg and browsers read such a file to its end. The concatenated chunks are
the same samples the non-streaming response would carry.
"""

import struct

import numpy as np

from services.kit.audio import encode_audio

MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm"}
_UNKNOWN_SIZE = struct.pack("<I", 0xFFFFFFFF)


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


def stream_chunk(samples: np.ndarray, sample_rate: int, fmt: str, first: bool) -> bytes:
    """Bytes for one streamed sentence; the first chunk of a WAV stream starts with its header."""
    pcm, _ = encode_audio(samples, sample_rate, "pcm")
    return wav_stream_header(sample_rate) + pcm if fmt == "wav" and first else pcm
