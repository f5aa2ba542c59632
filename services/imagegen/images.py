"""Image files in and out: uploads (source image and mask) decoded with limits, results encoded.

PIL does the work; this module adds the service's rules: which formats, how large, what a mask means.
"""

import io
import math
from collections.abc import Sequence

from PIL import Image, ImageOps, UnidentifiedImageError

from services.kit.decoding import check_decoding_work
from services.kit.errors import InvalidArgument, PayloadTooLarge, UnsupportedMediaType

READABLE_FORMATS = ("PNG", "JPEG", "WEBP")
# name -> (PIL format, media type)
OUTPUT_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
SIZE_MULTIPLE = 8  # the VAE downsamples by 8: latents need whole pixels
MIN_SIDE = 64


def decode_image(data: bytes, *, field: str, max_pixels: int) -> Image.Image:
    """An uploaded PNG/JPEG/WebP, EXIF rotation applied; the pixel count and the work its structure multiplies
    (JPEG scans, PNG chunks, WebP frames) are checked before decoding. Call it through run_decoding."""
    if not data:
        raise InvalidArgument(f"{field}: the file is empty", field=field)
    check_decoding_work(data, field)
    try:
        image = Image.open(io.BytesIO(data), formats=READABLE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{field}: {exc}", field=field) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnsupportedMediaType(
            f"{field}: not a readable image ({exc}); send one of {', '.join(READABLE_FORMATS)}", field=field
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{field}: {width}x{height} exceeds the limit of {max_pixels} pixels", field=field
        )
    try:
        image.load()
    except (OSError, ValueError) as exc:
        raise InvalidArgument(
            f"{field}: the {image.format} data is corrupt or truncated ({exc})", field=field
        ) from None
    return ImageOps.exif_transpose(image)


def reference_sheet(images: Sequence[tuple[str, bytes]], *, max_pixels: int) -> Image.Image:
    """Several source images side by side on one white sheet (a near-square grid, each image scaled into its
    cell), for image-to-image to redraw together: Stable Diffusion takes one source image where OpenAI's GPT
    image models take up to 16. The sheet stays within `max_pixels`, the first image's shape sets the cells,
    and each upload is decoded, scaled and released in turn."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    sheet, cell = None, (0, 0)
    for index, (field, data) in enumerate(images):
        image = decode_image(data, field=field, max_pixels=max_pixels).convert("RGB")
        if sheet is None:
            cell = fit_size(*image.size, max_pixels // (columns * rows))
            sheet = Image.new("RGB", (columns * cell[0], rows * cell[1]), "white")
        image = ImageOps.contain(image, cell, Image.Resampling.LANCZOS)
        x = index % columns * cell[0] + (cell[0] - image.width) // 2
        y = index // columns * cell[1] + (cell[1] - image.height) // 2
        sheet.paste(image, (x, y))
    return sheet


def mask_from(image: Image.Image) -> Image.Image:
    """A mask as the inpainting pipeline reads it: white repaints, black keeps.

    A mask with transparency follows OpenAI's rule (transparent pixels are the ones to edit); an
    opaque one is read as a grey-scale mask, white = edit (the diffusers convention).
    """
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha.point(lambda a: 255 if a < 128 else 0)
    return image.convert("L")


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio within max_pixels, both sides multiples of 8."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    return (
        max(SIZE_MULTIPLE, int(width * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE),
        max(SIZE_MULTIPLE, int(height * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE),
    )


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image at `size` (OpenAI's sizes are made within the pixel limit, then resized to the size named)."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def encode_image(image: Image.Image, fmt: str, quality: int | None = None) -> bytes:
    """PNG is lossless; `quality` (0-100) applies to JPEG and WebP."""
    pil_format, _ = OUTPUT_FORMATS[fmt]
    options = {} if fmt == "png" else {"quality": 95 if quality is None else quality}
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def media_type(fmt: str) -> str:
    return OUTPUT_FORMATS[fmt][1]
