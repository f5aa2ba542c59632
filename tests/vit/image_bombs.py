"""Images whose headers claim far more pixels than their bytes hold, made from real tiny files of each
format with only the size fields rewritten (so every other header field is what an encoder writes)."""

import io
import struct
import zlib

from PIL import Image

FORMATS = ("PNG", "JPEG", "GIF", "BMP")


def tiny(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 60)).save(buffer, fmt)
    return buffer.getvalue()


def claiming(fmt: str, width: int, height: int) -> bytes:
    """A tiny encoded image of `fmt` whose header says `width` x `height` (a few hundred bytes)."""
    data = bytearray(tiny(fmt))
    if fmt == "PNG":
        # IHDR is the first chunk: length, type, width, height, ..., then its CRC over type and data.
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    elif fmt == "JPEG":
        sof = data.index(b"\xff\xc0")  # baseline SOF0: marker, length, precision, height, width
        data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    elif fmt == "GIF":
        data[6:10] = struct.pack("<HH", width, height)  # logical screen
        descriptor = data.index(b",", 13)  # the image descriptor: left, top, width, height
        data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    elif fmt == "BMP":
        data[18:26] = struct.pack("<ii", width, height)
    else:
        raise ValueError(fmt)
    return bytes(data)


def zeros(fmt: str, width: int, height: int) -> bytes:
    """A real, fully decodable image of one colour: compresses to a sliver of its decoded size."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, fmt)
    return buffer.getvalue()


def _gif_image_block(data: bytes) -> bytes:
    """A GIF's first image descriptor with its colour table and data, up to the trailer."""
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[pos] == 0x21:  # extensions: introducer, label, sub-blocks up to the empty one
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    return data[pos:-1]


def gif_frames(screen: tuple[int, int], frames: list[tuple[int, int]]) -> bytes:
    """A GIF whose logical screen is `screen` and whose frames (each of one colour) have the given sizes:
    the screen says nothing about how large the frames are, and giflib decodes every one."""
    files = [zeros("GIF", width, height) for width, height in frames]
    first = files[0]
    # The first file's header and global colour table (Pillow writes the same one for each of these).
    head = bytearray(first[: len(first) - len(_gif_image_block(first)) - 1])
    head[6:10] = struct.pack("<HH", *screen)
    return bytes(head) + b"".join(_gif_image_block(data) for data in files) + b";"
