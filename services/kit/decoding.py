"""Decoding uploads (images, audio) bounded in time as well as in size.

Two things every service that decodes an upload shares:

- `run_decoding(fn, *args)` runs a decode on a few threads of its own (`MODELSERVE_DECODE_THREADS`, 2) with a
  bounded number waiting (`MODELSERVE_DECODE_MAX_WAITING`, 16); past that a request gets 503 + Retry-After
  (gRPC RESOURCE_EXHAUSTED). Decoding never runs on the event loop's default pool, which protocol parsing
  (OIP, JSON bodies) shares: six hostile decodes at once used to fill it and stall every other request.
- `check_decoding_work(data, field)` reads an encoded image's structure and refuses the files whose decoding
  work is multiplied beyond what their pixel count says, before any decoder sees them: a progressive JPEG of
  1000 identical scans (each scan is a pass over every coefficient: 71 KB took 2.6 s), a PNG cut into a
  million chunks (a few microseconds each in Pillow), a GIF or animated WebP of thousands of frames.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import InvalidArgument, Overloaded

T = TypeVar("T")

# libjpeg-turbo's own default limit is 1000 scans; an encoder's progressive JPEG has about 10 (6 in grey).
MAX_JPEG_SCANS = 100
# Encoders write IDAT chunks of 8-64 KB (a 16 MB PNG is ~2,000 of them); each chunk costs ~5 us in Pillow.
MAX_PNG_CHUNKS = 10_000
# GIF and animated WebP frames; a decoder that keeps one frame may still read them all (giflib does).
MAX_ANIMATION_FRAMES = 1000
# GIF blocks (extensions, image descriptors, data sub-blocks of up to 255 bytes) walked to find every frame
# (here and in the ViT graph, ~25 us a block there): encoders fill sub-blocks, so this covers ~4 MB of GIF;
# a file of more blocks is refused.
MAX_GIF_BLOCKS = 16384

JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIF_MAGIC = b"GIF8"
WEBP_MAGIC = (b"RIFF", b"WEBP")  # bytes 0-4 and 8-12

JPEG_SOS, JPEG_EOI = 0xDA, 0xD9
# Markers without a length: TEM and the restart markers RST0-RST7 (SOI is only at the start).
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


class DecodingSettings(BaseSettings):
    """The decoding threads of one process, shared by every service it serves."""

    model_config = SettingsConfigDict(env_prefix="MODELSERVE_DECODE_", extra="ignore")

    threads: int = Field(2, ge=1, description="image and audio decodes that run at once")
    max_waiting: int = Field(16, ge=0, description="decodes waiting for a thread; more get 503 + Retry-After")


class DecodePool:
    """A thread pool whose queue is bounded: a decode beyond `threads + max_waiting` is refused at once."""

    def __init__(self, threads: int, max_waiting: int):
        self.threads = threads
        self.capacity = threads + max_waiting
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self.lock = threading.Lock()
        self.pending = 0

    def release(self, _: Future) -> None:
        with self.lock:
            self.pending -= 1

    async def run(self, fn: Callable[..., T], *args) -> T:
        with self.lock:
            if self.pending >= self.capacity:
                raise Overloaded(
                    f"{self.pending} uploads are being decoded or waiting to be (MODELSERVE_DECODE_THREADS + "
                    "MODELSERVE_DECODE_MAX_WAITING); retry shortly",
                    retry_after=1,
                )
            self.pending += 1
        # Released when the work ends, not when its caller stops waiting: a running decode holds its slot.
        context = contextvars.copy_context()  # request ids and trace spans, as asyncio.to_thread keeps them
        future = self.executor.submit(context.run, functools.partial(fn, *args))
        future.add_done_callback(self.release)
        return await asyncio.wrap_future(future)


@functools.cache
def decode_pool() -> DecodePool:
    settings = DecodingSettings()
    return DecodePool(settings.threads, settings.max_waiting)


async def run_decoding(fn: Callable[..., T], *args) -> T:
    """`fn(*args)` on the process's decoding threads (call with whatever decodes an upload)."""
    return await decode_pool().run(fn, *args)


# -- work multipliers ---------------------------------------------------------------------------------


def jpeg_scan_count(data: bytes, stop_after: int) -> int:
    """Start-of-scan markers, found as libjpeg finds them: marker segments are skipped by their length, and
    entropy-coded data is searched for the next 0xFF that is neither byte stuffing (FF 00) nor a restart
    marker; bytes where a marker should be are skipped up to the next 0xFF, as libjpeg resynchronises.
    Counting stops past `stop_after`."""
    size, pos, scans = len(data), 2, 0
    while pos + 1 < size and scans <= stop_after:
        if data[pos] != 0xFF:  # garbage before a marker
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == JPEG_EOI:
            break
        if marker in JPEG_STANDALONE or marker == 0x00:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker != JPEG_SOS:
            continue
        scans += 1
        while True:  # the scan's entropy-coded data runs to the next real marker
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= size:
                return scans
            following = data[pos + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                pos += 2
                continue
            break
    return scans


def png_chunk_count(data: bytes, stop_after: int) -> int:
    """Chunks up to IEND (or the end of the data), counting stops past `stop_after`."""
    pos, chunks = len(PNG_MAGIC), 0
    while pos + 8 <= len(data) and chunks <= stop_after:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        chunks += 1
        if kind == b"IEND":
            break
        pos += 12 + length  # length, type, data, CRC
    return chunks


@dataclass(frozen=True)
class GifFrames:
    count: int
    pixels: int  # every frame's own area, summed (giflib reads each into a raster of its size)
    longest_side: int


def gif_frames(data: bytes) -> GifFrames | None:
    """Every frame of a GIF, found by walking its blocks (as the exported ViT graph does, step for step);
    None when the structure is cut short, invalid, or longer than MAX_GIF_BLOCKS blocks."""

    def color_table(flags: int) -> int:
        return 3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0

    if len(data) < 13:
        return None
    pos, in_chain, count, pixels, longest = 13 + color_table(data[10]), False, 0, 0, 0
    for _ in range(MAX_GIF_BLOCKS):
        if pos >= len(data):
            return None
        block = data[pos]
        if in_chain:  # a data sub-block: its length, then that many bytes; the empty one ends the chain
            pos, in_chain = pos + block + 1, block > 0
            continue
        if block == 0x3B:  # trailer
            return GifFrames(count, pixels, longest)
        if block == 0x21:  # extension: introducer and label, then sub-blocks
            pos += 2
        elif block == 0x2C and pos + 10 <= len(data):  # image descriptor: left, top, width, height, flags
            width = int.from_bytes(data[pos + 5 : pos + 7], "little")
            height = int.from_bytes(data[pos + 7 : pos + 9], "little")
            count, pixels, longest = count + 1, pixels + width * height, max(longest, width, height)
            pos += 10 + color_table(data[pos + 9]) + 1  # descriptor, local colour table, LZW code size
        else:
            return None
        in_chain = True
    return None


def webp_frame_count(data: bytes, stop_after: int) -> int:
    """ANMF (animation frame) chunks of a RIFF WebP file; a still WebP has none."""
    pos, frames, end = 12, 0, min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    while pos + 8 <= end and frames <= stop_after:
        frames += data[pos : pos + 4] == b"ANMF"
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 8 + length + (length & 1)  # chunks are padded to even sizes
    return frames


def check_decoding_work(data: bytes, field: str) -> None:
    """Refuse (400 naming `field` and the limit) an encoded image whose structure multiplies decoding work:
    JPEG scans, PNG chunks, GIF or WebP frames. Other formats, and bytes too broken to walk, pass: the
    decoder refuses those."""
    if data.startswith(JPEG_MAGIC):
        scans = jpeg_scan_count(data, MAX_JPEG_SCANS)
        if scans > MAX_JPEG_SCANS:
            raise InvalidArgument(
                f"{field}: the JPEG has more than {MAX_JPEG_SCANS} scans (each one is a pass over the whole "
                f"image; an encoder's progressive JPEG has about 10); re-encode it",
                field=field,
            )
    elif data.startswith(PNG_MAGIC):
        chunks = png_chunk_count(data, MAX_PNG_CHUNKS)
        if chunks > MAX_PNG_CHUNKS:
            raise InvalidArgument(
                f"{field}: the PNG has more than {MAX_PNG_CHUNKS} chunks; re-encode it", field=field
            )
    elif data.startswith(GIF_MAGIC):
        frames = gif_frames(data)
        if frames is not None and frames.count > MAX_ANIMATION_FRAMES:
            raise InvalidArgument(
                f"{field}: the GIF has {frames.count} frames; at most {MAX_ANIMATION_FRAMES} are accepted",
                field=field,
            )
    elif data[:4] == WEBP_MAGIC[0] and data[8:12] == WEBP_MAGIC[1]:
        if webp_frame_count(data, MAX_ANIMATION_FRAMES) > MAX_ANIMATION_FRAMES:
            raise InvalidArgument(
                f"{field}: the WebP animation has more than {MAX_ANIMATION_FRAMES} frames", field=field
            )
