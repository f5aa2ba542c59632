"""Hostile images against every image input of the image generation service, on the running platform.

REST /v1/images/edits (image and mask) and gRPC Generate (image and mask) must refuse, by the header alone,
images whose decoded pixels would not fit: a few hundred bytes claiming 60000x60000, a valid PNG of
20000x20000 zeros that compresses to kilobytes, and one just over the service's own pixel limit (below
Pillow's built-in bomb check, so only the service stands in its way). Each gets a 4xx naming the field and
the pixel count, the server keeps serving, and its peak memory barely moves.
"""

import io
import struct
import time
import zlib

import grpc
import httpx
import pytest
from PIL import Image

from protos import imagegen_pb2 as pb
from protos import imagegen_pb2_grpc as pb_grpc
from services.imagegen.settings import ImageGenSettings

MEMORY_BUDGET_MB = 300
SECONDS_BUDGET = 20
INPUT_PIXEL_LIMIT = ImageGenSettings.model_fields["max_input_pixels"].default


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A header saying width x height RGB, then a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(1024)))
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose start-of-frame says width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "gray").save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def zeros_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of zeros: every row compresses to almost nothing."""
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, "PNG")
    return buffer.getvalue()


# name -> (file, what the refusal must name besides the field)
HOSTILE = {
    "PNG header claiming 60000x60000": (lambda: png_claiming(60000, 60000), "3600000000 pixels"),
    "JPEG header claiming 60000x60000": (lambda: jpeg_claiming(60000, 60000), "3600000000 pixels"),
    "PNG bomb of 20000x20000 zeros": (lambda: zeros_png(20000, 20000), "400000000 pixels"),
    "PNG just over the service's pixel limit": (lambda: zeros_png(6000, 6000), f"{INPUT_PIXEL_LIMIT} pixels"),
}


@pytest.fixture(scope="module")
def hostile_files() -> dict[str, bytes]:
    return {name: make() for name, (make, _) in HOSTILE.items()}


@pytest.fixture(scope="module")
def stub(platform):
    with grpc.insecure_channel(platform.grpc_target) as channel:
        yield pb_grpc.ImageGenerationStub(channel)


def measured(platform, call):
    baseline = platform.reset_peak_memory()
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started, platform.peak_growth_mb(baseline)


def assert_still_serving(platform, stub) -> None:
    platform.assert_alive()
    reply = stub.Generate(pb.GenerateRequest(prompt="a cat", image=small_png(), steps=2, seed=1), timeout=120)
    assert reply.task == "image-to-image" and len(reply.images) == 1


def test_the_hostile_files_are_small(hostile_files):
    assert all(len(data) < 1024 * 1024 for data in hostile_files.values())
    assert len(hostile_files["PNG header claiming 60000x60000"]) < 1024


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("field", ["image", "mask"])
def test_rest_edits_refuse_by_the_header(platform, stub, hostile_files, name, field):
    files = {"image": ("image.png", hostile_files[name] if field == "image" else small_png(), "image/png")}
    if field == "mask":
        files["mask"] = ("mask.png", hostile_files[name], "image/png")
    response, seconds, growth = measured(
        platform,
        lambda: httpx.post(platform.rest_url + "/v1/images/edits", data={"prompt": "a cat"}, files=files, timeout=120),
    )
    assert response.status_code in (400, 413), response.text[:300]
    error = response.json()["error"]
    assert error["param"] == field and HOSTILE[name][1] in error["message"], error
    assert seconds < SECONDS_BUDGET and growth < MEMORY_BUDGET_MB, (seconds, growth)
    assert_still_serving(platform, stub)


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("field", ["image", "mask"])
def test_grpc_generate_refuses_by_the_header(platform, stub, hostile_files, name, field):
    images = {"image": hostile_files[name]} if field == "image" else {"image": small_png(), "mask": hostile_files[name]}

    def call():
        with pytest.raises(grpc.RpcError) as failure:
            stub.Generate(pb.GenerateRequest(prompt="a cat", **images), timeout=120)
        return failure.value

    error, seconds, growth = measured(platform, call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}:") and HOSTILE[name][1] in error.details(), error.details()
    assert seconds < SECONDS_BUDGET and growth < MEMORY_BUDGET_MB, (seconds, growth)
    assert_still_serving(platform, stub)
