"""Audio files whose headers say whatever a test needs, for the kit's decoder tests and the hostile-audio tests."""

import struct


def wav_header(rate: int, channels: int = 1, frames: int = 1000) -> bytes:
    """A 16-bit PCM WAV (silence) written by hand, so that its header can claim any rate or channel count."""
    body = bytes(frames * channels * 2)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * channels * 2) % 2**32, channels * 2, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def flac_claiming(data: bytes, total_frames: int) -> bytes:
    """The FLAC file with its STREAMINFO total-samples field (36 bits; 0 = unknown) replaced."""
    patched = bytearray(data)
    start = 4 + 4 + 10  # "fLaC", metadata block header, then block sizes and frame sizes
    field = int.from_bytes(patched[start : start + 8], "big")
    field = (field & ~((1 << 36) - 1)) | total_frames
    patched[start : start + 8] = field.to_bytes(8, "big")
    return bytes(patched)
