"""Bounds on what one Predict can make this server allocate, checked from what the request declares (tensor
shapes and value counts, JSON structure, image headers) before anything is converted, parsed or decoded.

A TensorProto's shape is only a claim: TensorFlow fills a tensor that lists fewer values than its shape
holds by repeating the last one, so a ~100-byte request declaring 50,000,000 strings used to become a
50,000,000-element tensor (44 s, +14 GB). JSON is parsed recursively and into one Python object per value,
and an image's header says how large the decoded picture will be, its structure how many passes decoding
takes (JPEG scans, GIF frames). Each is read and bounded first.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin
from tensorflow.core.framework import tensor_pb2

from services.kit.decoding import check_decoding_work, gif_frames
from services.kit.errors import InvalidArgument

from .settings import ViTSettings

# TensorShape's own bound on rank.
MAX_RANK = 254


@dataclass(frozen=True)
class RequestLimits:
    max_elements: int
    max_string_bytes: int
    max_json_depth: int
    max_json_elements: int
    max_image_side: int
    max_image_pixels: int
    max_rows: float | None = None

    @classmethod
    def from_settings(cls, settings: ViTSettings) -> RequestLimits:
        return cls(
            max_elements=settings.max_tensor_elements,
            max_string_bytes=settings.max_string_bytes,
            max_json_depth=settings.max_json_depth,
            max_json_elements=settings.max_json_elements,
            max_image_side=settings.max_image_side,
            max_image_pixels=settings.max_image_pixels,
            max_rows=settings.max_request_cost,
        )


class TensorBudget:
    """Elements and string bytes of one request, summed over its inputs as each is declared."""

    def __init__(self, limits: RequestLimits):
        self.limits = limits
        self.elements = 0
        self.string_bytes = 0

    def take_elements(self, name: str, shape: list[int]) -> int:
        count = math.prod(shape)  # Python ints: exact where int64 would overflow
        self.elements += count
        if self.elements > self.limits.max_elements:
            so_far = f" ({self.elements} with the inputs before it)" if self.elements != count else ""
            raise InvalidArgument(
                f"input {name}: shape {shape} holds {count} elements{so_far}; a request may hold at most "
                f"{self.limits.max_elements} (VIT_MAX_TENSOR_ELEMENTS)"
            )
        return count

    def check_rows(self, rows: int | None, source: str) -> None:
        """Rows (images) are what the batcher budgets; checked here too, before the work it would bound:
        REST instances become one array each before they are stacked, and every string is header-checked."""
        if rows is not None and self.limits.max_rows is not None and rows > self.limits.max_rows:
            raise InvalidArgument(
                f"{source} holds {rows} rows; a request may hold at most {self.limits.max_rows:g} "
                "(VIT_MAX_REQUEST_COST)"
            )

    def take_string_bytes(self, name: str, count: int) -> None:
        self.string_bytes += count
        if self.string_bytes > self.limits.max_string_bytes:
            raise InvalidArgument(
                f"input {name}: string values reach {self.string_bytes} bytes; a request may hold at most "
                f"{self.limits.max_string_bytes} (VIT_MAX_STRING_BYTES)"
            )


# -- gRPC TensorProtos ------------------------------------------------------------------------------


def proto_dtype(name: str, proto: tensor_pb2.TensorProto) -> tf.DType:
    try:
        return tf.as_dtype(proto.dtype)
    except TypeError:
        raise InvalidArgument(f"tensor parsing error: {name}: unknown dtype {proto.dtype}") from None


def proto_shape(name: str, proto: tensor_pb2.TensorProto) -> list[int]:
    """The declared shape, refused when TensorFlow could not build a tensor of it."""
    if proto.tensor_shape.unknown_rank:
        raise InvalidArgument(f"tensor parsing error: {name}: a request tensor must have a known shape")
    dims = proto.tensor_shape.dim
    if len(dims) > MAX_RANK:
        raise InvalidArgument(f"tensor parsing error: {name}: rank {len(dims)} exceeds {MAX_RANK}")
    shape = [dim.size for dim in dims]
    if any(size < 0 for size in shape):
        raise InvalidArgument(f"tensor parsing error: {name}: shape {shape} has a negative dimension")
    return shape


def _value_field(dtype: tf.DType) -> tuple[str, int]:
    """The repeated field TensorProto keeps `dtype`'s values in, and how many entries make one value."""
    fields = {
        tf.string: "string_val",
        tf.float32: "float_val",
        tf.float64: "double_val",
        tf.float16: "half_val",
        tf.bfloat16: "half_val",
        tf.int64: "int64_val",
        tf.uint32: "uint32_val",
        tf.uint64: "uint64_val",
        tf.bool: "bool_val",
    }
    if dtype in fields:
        return fields[dtype], 1
    if dtype in (tf.complex64, tf.complex128):
        return ("scomplex_val" if dtype == tf.complex64 else "dcomplex_val"), 2
    if dtype.is_integer or dtype.is_quantized:
        return "int_val", 1
    raise InvalidArgument(f"tensor parsing error: dtype {dtype.name} is not accepted in a request")


def check_tensor_proto(name: str, proto: tensor_pb2.TensorProto, budget: TensorBudget) -> None:
    """The values present must fit the declared shape, and what conversion builds must fit the budget.

    Fewer values than elements is TensorFlow's fill form (tf.make_tensor_proto(5.0, shape=[3]) sends one
    value): allowed, with the filled copies counted. More values than elements is refused.
    """
    dtype = proto_dtype(name, proto)
    shape = proto_shape(name, proto)
    elements = budget.take_elements(name, shape)
    if proto.tensor_content:
        if dtype == tf.string:
            raise InvalidArgument(f"tensor parsing error: {name}: DT_STRING values go in string_val")
        itemsize = np.dtype(dtype.as_numpy_dtype).itemsize
        if len(proto.tensor_content) != elements * itemsize:
            raise InvalidArgument(
                f"tensor parsing error: {name}: tensor_content holds {len(proto.tensor_content)} bytes; shape "
                f"{shape} of {dtype.name} needs {elements * itemsize}"
            )
        return
    field, per_value = _value_field(dtype)
    values = getattr(proto, field)
    count = len(values) // per_value
    if count > elements:
        raise InvalidArgument(
            f"tensor parsing error: {name}: {count} values for shape {shape}, which holds {elements}"
        )
    if dtype == tf.string:
        last = len(values[-1]) if values else 0
        budget.take_string_bytes(name, sum(len(value) for value in values) + (elements - count) * last)


# -- REST JSON --------------------------------------------------------------------------------------

_QUOTE, _COMMA, _COLON = ord('"'), ord(","), ord(":")
_DEPTH_STEP = np.zeros(256, np.int64)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1
_SCAN_CHUNK = 1 << 20


def check_json_structure(body: bytes, limits: RequestLimits) -> None:
    """Nesting depth and value count (object keys included) of a JSON document, read without parsing it.

    The parser recurses once per level (200,000 levels ended in a RecursionError) and makes a Python object
    per value (a 32 MB body of small lists is ~0.5 GB of them), so both are bounded first. Counting is
    vectorised over 1 MiB chunks; string contents are skipped by quote parity once escapes are removed.
    """
    if json.detect_encoding(body) not in ("utf-8", "utf-8-sig"):
        raise InvalidArgument("JSON Parse error: the document is not UTF-8")
    # Escapes pair left to right from the start of a backslash run, so dropping "\\" and then '\"' leaves
    # only the quotes that open and close strings.
    text = np.frombuffer(body.replace(b"\\\\", b"").replace(b'\\"', b""), np.uint8)
    depth, deepest, values, inside = 0, 0, 1, 0
    for start in range(0, len(text), _SCAN_CHUNK):
        chunk = text[start : start + _SCAN_CHUNK]
        outside = ((np.cumsum(chunk == _QUOTE, dtype=np.int64) + inside) & 1) == 0
        structure = chunk[outside]
        steps = _DEPTH_STEP[structure]
        levels = np.cumsum(steps) + depth
        if len(levels):
            deepest = max(deepest, int(levels.max()))
            depth = int(levels[-1])
        # Every value but a container's first follows a comma, and every object key precedes a colon:
        # commas + containers + colons + 1 bounds the number of objects the parser makes.
        values += int(np.count_nonzero(structure == _COMMA) + np.count_nonzero(steps == 1))
        values += int(np.count_nonzero(structure == _COLON))
        inside = int(not outside[-1])  # quote parity carried into the next chunk
        if deepest > limits.max_json_depth:
            raise InvalidArgument(
                f"JSON Parse error: the document nests deeper than {limits.max_json_depth} levels "
                "(VIT_MAX_JSON_DEPTH)"
            )
        if values > limits.max_json_elements:
            raise InvalidArgument(
                f"JSON Parse error: the document holds more than {limits.max_json_elements} values "
                "(VIT_MAX_JSON_ELEMENTS)"
            )


# -- images -----------------------------------------------------------------------------------------

# decode_image's format detection (TensorFlow's ClassifyFileFormat) for the formats the graph reads, and the
# Pillow parsers that read their headers: instantiated directly, they parse the header and decode nothing.
_IMAGE_PARSERS = (
    (b"\xff\xd8\xff", JpegImagePlugin.JpegImageFile),
    (b"\x89PNG\r\n\x1a\n", PngImagePlugin.PngImageFile),
    (b"GIF8", GifImagePlugin.GifImageFile),
    (b"BM", BmpImagePlugin.BmpImageFile),
)
# The exported graph's test for base64 text; an encoded image always has bytes outside this alphabet.
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9_\-+/]*=*")
_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _image_bytes(value: bytes) -> bytes | None:
    """The encoded image a string input carries (raw, or base64 text as the ViT export accepts), if any."""
    if not _BASE64_TEXT.fullmatch(value):
        return value
    try:
        # Sixteen characters decode to the twelve bytes that hold every magic number; decode all only then.
        if not _b64decode(value[:16]).startswith(tuple(magic for magic, _ in _IMAGE_PARSERS)):
            return None
        return _b64decode(value)
    except (binascii.Error, ValueError):
        return None  # not base64 after all: the graph refuses it


def _b64decode(text: bytes) -> bytes:
    """Either alphabet, padding optional (as the exported graph reads it)."""
    text = text.translate(_URLSAFE).rstrip(b"=")
    return base64.b64decode(text + b"=" * (-len(text) % 4))


@dataclass(frozen=True)
class ImageClaim:
    """What decoding an image would allocate, as its header says."""

    format: str
    width: int
    height: int
    pixels: int  # width x height, or for a GIF every frame's own area (giflib decodes them all)
    longest_side: int

    def describe(self) -> str:
        size = f"{self.format} image of {self.width}x{self.height} pixels"
        if self.pixels == self.width * self.height and self.longest_side == max(self.width, self.height):
            return size
        return f"{size} whose frames hold {self.pixels} pixels, {self.longest_side} on their longest side"


def image_claim(data: bytes) -> ImageClaim | None:
    """What an encoded image's header claims, or None when it is not one (or is too broken to read: the
    graph's own header check and decoder refuse those)."""
    for magic, parser in _IMAGE_PARSERS:
        if data.startswith(magic):
            try:
                image = parser(io.BytesIO(data))
            except (SyntaxError, OSError, ValueError, EOFError, IndexError, KeyError):
                return None
            width, height = image.size
            pixels, longest = width * height, max(width, height)
            if image.format == "GIF":
                frames = gif_frames(data)
                if frames is None:
                    return None
                pixels, longest = max(pixels, frames.pixels), max(longest, frames.longest_side)
            return ImageClaim(image.format, width, height, pixels, longest)
    return None


def check_image_headers(name: str, values: np.ndarray, limits: RequestLimits) -> None:
    """Refuse encoded images whose header claims more pixels than the model may decode, or whose structure
    multiplies the decoding work (JPEG scans, GIF frames: services.kit.decoding), before queuing."""
    for index, value in enumerate(values.ravel()):
        data = _image_bytes(value)
        claim = image_claim(data) if data is not None else None
        if claim is None:
            continue
        check_decoding_work(data, f"input {name}[{index}]")
        if claim.longest_side > limits.max_image_side or claim.pixels > limits.max_image_pixels:
            raise InvalidArgument(
                f"input {name}[{index}]: {claim.describe()}; images may be at most {limits.max_image_side} "
                f"pixels on a side (VIT_MAX_IMAGE_SIDE) and {limits.max_image_pixels} pixels in all "
                "(VIT_MAX_IMAGE_PIXELS)"
            )


def check_string_inputs(inputs: dict[str, np.ndarray], limits: RequestLimits) -> None:
    """Encoded images among the string inputs, refused by their headers before they reach the model."""
    for key, value in sorted(inputs.items()):
        if value.dtype == object:
            check_image_headers(key, value, limits)
