"""Files in and out: reading uploads from paths, bytes or file objects; saving streamed WAV audio."""

import os
import struct
from pathlib import Path
from typing import BinaryIO

Source = bytes | str | os.PathLike | BinaryIO


def read_source(source: Source, default_name: str = "upload") -> tuple[bytes, str]:
    """(content, file name) from a path, raw bytes or an open binary file."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), default_name
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return path.read_bytes(), path.name
    return source.read(), Path(getattr(source, "name", default_name)).name


def finalize_wav(data: bytes) -> bytes:
    """A streamed WAV (RIFF and data sizes 0xFFFFFFFF: "read to the end") with its real sizes filled in.

    Streams must start before their length is known; a saved file should carry the sizes so that
    every player, not only the tolerant ones, reads it. Other data is returned unchanged.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    fixed = bytearray(data)
    struct.pack_into("<I", fixed, 4, len(data) - 8)
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        if chunk_id == b"data":
            struct.pack_into("<I", fixed, offset + 4, len(data) - offset - 8)
            return bytes(fixed)
        offset += 8 + size + (size & 1)
    return data
