"""Export a Hugging Face ``ViTForImageClassification`` checkpoint as a TensorFlow Serving SavedModel.

The SavedModel carries its own pre- and post-processing (as in the Hugging Face post "Deploying ViT on
Kubernetes with TF Serving"), so any TF Serving client can send image bytes and get a label back:

``serving_default``
    ``string_input``: ``[batch]`` DT_STRING, each element base64 text of an encoded JPEG/PNG/GIF/BMP image
    (URL-safe like the blog's client sends; standard ``+/`` is accepted too), or the raw image bytes
    (what TF Serving hands the model when a REST client sends ``{"b64": ...}``).
    Returns ``label`` ``[batch]`` DT_STRING and ``confidence`` ``[batch]`` DT_FLOAT.
``top_k``
    Same input; returns ``labels`` ``[batch, k]`` DT_STRING and ``scores`` ``[batch, k]`` DT_FLOAT.
``pixel_values``
    ``pixel_values``: ``[batch, 3, H, W]`` DT_FLOAT, already preprocessed exactly like the checkpoint's
    ``ViTImageProcessor`` output (channels first); returns ``logits`` ``[batch, num_labels]``.
``classify`` (method ``tensorflow/serving/classify``, for TF Serving's Classify API)
    ``inputs``: ``[batch]`` DT_STRING of serialized ``tf.Example``, the encoded image in the bytes feature
    ``image/encoded``; returns ``classes`` ``[batch, k]`` DT_STRING and ``scores`` ``[batch, k]`` DT_FLOAT
    (the top k, best first). REST: ``POST /v1/models/hf-vit:classify`` with
    ``{"signature_name": "classify", "examples": [{"image/encoded": {"b64": "..."}}]}``.

Preprocessing follows the checkpoint's ``preprocessor_config.json`` the way the transformers PIL image
processor does: decode to RGB (alpha dropped, grey replicated, first GIF frame; JPEG with the accurate IDCT
PIL uses), resize with the configured PIL filter as PIL runs it (two separable antialiased passes in PIL's
order, rounding to uint8 after each), rescale, normalize. EXIF orientation is not applied (the transformers
pipeline applies it; TF's decoders cannot).

Before anything is decoded, the graph reads each image's size from its header (JPEG SOF, PNG IHDR, GIF
logical screen and every frame's image descriptor, BMP info header) and fails with InvalidArgument when it
exceeds ``--max-image-side`` on a side or ``--max-image-pixels`` in all (a GIF's frames summed: giflib
decodes them all), or when the bytes are none of those four formats. A header is a
claim the decoder would act on: a 150 KB PNG of one colour decodes to 430 MB at 12000x12000, a float copy
of it to four times that. The work decoding takes is bounded too: a JPEG with more than ``--max-jpeg-scans``
start-of-scan markers (each scan is a pass over every coefficient: 71 KB of 1000 identical scans took 2-4 s)
or a GIF of more than ``--max-gif-frames`` frames fails the same way. The checks are part of the SavedModel,
so they hold in tensorflow/serving too.

Layout, as TF Serving expects it::

    <model_base>/<name>/batching_parameters.txt
    <model_base>/<name>/<version>/saved_model.pb
    <model_base>/<name>/<version>/variables/variables.{index,data-*}
    <model_base>/<name>/<version>/assets.extra/tf_serving_warmup_requests

How TF Serving loads it::

    tensorflow_model_server --port=8500 --rest_api_port=8501 \\
        --model_name=hf-vit --model_base_path=/models/hf-vit \\
        --enable_batching --batching_parameters_file=/models/hf-vit/batching_parameters.txt \\
        --enable_model_warmup

``--model_base_path`` points at ``<model_base>/<name>``; the server polls it and serves the highest
numeric version directory (older ones stay reachable through ``/versions/<v>`` only if the model config's
version policy asks for them). Non-numeric entries such as ``batching_parameters.txt`` are ignored by
that scan, which is why the batching file can live there: TF Serving never finds it on its own, the
``--batching_parameters_file`` flag names it. ``--enable_model_warmup`` (default true) replays
``assets.extra/tf_serving_warmup_requests`` (a TFRecord of ``PredictionLog``) before the version is marked
AVAILABLE, so the first real request does not pay for lazy initialisation.

Command::

    python -m services.vit.export --checkpoint google/vit-base-patch16-224 \\
        --model-base models/vit-serving --name hf-vit [--version N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Keras 3 reads its backend once, at import; ExportArchive needs TensorFlow's.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
)

from services.kit.decoding import MAX_ANIMATION_FRAMES, MAX_GIF_BLOCKS, MAX_JPEG_SCANS  # noqa: E402

from .examples import Method, set_method_names  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "google/vit-base-patch16-224"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
BATCHING_FILE = "batching_parameters.txt"
CLASSIFY_SIGNATURE = "classify"
# The tf.Example feature holding the encoded image (the name TF's image datasets use).
IMAGE_FEATURE = "image/encoded"
# Images whose header claims more are refused in-graph (InvalidArgument) before they are decoded.
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 25_000_000
# PIL resampling codes (preprocessor_config.json "resample") -> tf.image.resize methods with the same kernel.
_PIL_TO_TF_RESIZE = {2: "bilinear", 3: "bicubic", 1: "lanczos3"}
_BASE64_TEXT = r"[A-Za-z0-9_\-+/]*=*"


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's ``BatchingParameters`` (session_bundle_config.proto), written as a text proto."""

    max_batch_size: int = 16
    batch_timeout_micros: int = 5000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4

    def to_text_proto(self) -> str:
        return "".join(f"{field} {{ value: {value} }}\n" for field, value in vars(self).items())


@dataclass(frozen=True)
class Preprocessing:
    """The subset of a ViTImageProcessor config that the graph reproduces."""

    height: int
    width: int
    do_resize: bool
    resize_method: str
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @classmethod
    def from_config(cls, cfg: dict, image_size: int) -> Preprocessing:
        size = cfg.get("size", {"height": image_size, "width": image_size})
        if set(size) != {"height", "width"}:
            raise ValueError(f"only size {{height, width}} is supported, got {size}")
        if (size["height"], size["width"]) != (image_size, image_size):
            raise ValueError(f"processor size {size} does not match the model's image_size {image_size}")
        if cfg.get("do_center_crop") or cfg.get("do_pad"):
            raise ValueError("center crop / padding in the preprocessor config are not supported")
        resample = cfg.get("resample", 2)
        if resample not in _PIL_TO_TF_RESIZE:
            raise ValueError(f"unsupported PIL resample filter {resample}")
        return cls(
            height=size["height"],
            width=size["width"],
            do_resize=cfg.get("do_resize", True),
            resize_method=_PIL_TO_TF_RESIZE[resample],
            do_rescale=cfg.get("do_rescale", True),
            rescale_factor=cfg.get("rescale_factor", 1 / 255),
            do_normalize=cfg.get("do_normalize", True),
            image_mean=tuple(cfg.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(cfg.get("image_std", (0.5, 0.5, 0.5))),
        )


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A local checkpoint directory, downloading config and safetensors weights for a hub id."""
    path = Path(checkpoint)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        # Weights only as safetensors: pickled .bin files are never fetched or loaded.
        path = Path(snapshot_download(str(checkpoint), allow_patterns=["*.json", "*.safetensors"]))
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} has no .safetensors weights (pickled checkpoints are not loaded)")
    return path


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _round_to_uint8_range(x: tf.Tensor) -> tf.Tensor:
    # PIL rounds half up and clips to 0..255 after each pass (tf.round would round half to even).
    return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)


def _pil_resize(image: tf.Tensor, height: int, width: int, method: str) -> tf.Tensor:
    """Resize float pixels as PIL's ImagingResample does: one axis, uint8 rounding, the other axis."""
    in_h, in_w = tf.shape(image)[0], tf.shape(image)[1]

    def horizontal_first():
        x = tf.image.resize(image, [in_h, width], method=method, antialias=True)
        return tf.image.resize(_round_to_uint8_range(x), [height, width], method=method, antialias=True)

    def vertical_first():
        x = tf.image.resize(image, [height, in_w], method=method, antialias=True)
        return tf.image.resize(_round_to_uint8_range(x), [height, width], method=method, antialias=True)

    # Pillow 13 (read from its ImagingResample) starts with the vertical pass when that drops more than
    # twice as many rows as the horizontal pass drops columns; the order changes ~20% of pixels by 1.
    rows_dropped, cols_dropped = in_h - height, in_w - width
    vertical = tf.logical_and(rows_dropped > 0, rows_dropped > 2 * cols_dropped)
    return _round_to_uint8_range(tf.cond(vertical, vertical_first, horizontal_first))


# decode_image's own format detection (TensorFlow's ClassifyFileFormat), for the formats read here.
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GIF_MAGIC = b"GIF8"
_BMP_MAGIC = b"BM"
# The header bytes the size fields lie in: PNG's IHDR width and height end at 24, BMP's at 26.
_HEADER_BYTES = 26


def _header(data: tf.Tensor) -> tf.Tensor:
    """The first _HEADER_BYTES bytes as int64, zero-padded when the data is shorter."""
    head = tf.strings.substr(data, 0, _HEADER_BYTES)
    padded = tf.strings.substr(tf.strings.join([head, tf.constant(b"\0" * _HEADER_BYTES)]), 0, _HEADER_BYTES)
    return tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)


def _uint(header: tf.Tensor, start: int, size: int, big_endian: bool) -> tf.Tensor:
    order = range(size - 1, -1, -1) if big_endian else range(size)
    return tf.add_n([header[start + i] * (256**k) for k, i in enumerate(order)])


def _int32_le(header: tf.Tensor, start: int) -> tf.Tensor:
    value = _uint(header, start, 4, big_endian=False)
    return tf.where(value >= 2**31, value - 2**32, value)


def _color_table_bytes(flags: tf.Tensor) -> tf.Tensor:
    """A GIF colour table's size from the packed flags byte of the screen or an image descriptor."""
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), 0)


def _gif_frames(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(frames, pixels of all frames, longest frame side, whether the block structure is whole and walkable).

    giflib reads every frame into a raster of the frame's own size before TensorFlow keeps the first one:
    a small logical screen says nothing about them, so each image descriptor is found by walking the blocks.
    """
    raw = tf.io.decode_raw(data, tf.uint8)
    size = tf.size(raw, out_type=tf.int64)

    def byte(i):
        """The byte at i, or -1 past the end."""
        i = tf.cast(i, tf.int64)
        value = tf.cast(tf.gather(raw, tf.minimum(i, size - 1)), tf.int64)
        return tf.where(i < size, value, tf.constant(-1, tf.int64))

    def le16(i):
        return byte(i) + 256 * byte(i + 1)

    # State: position, inside a chain of data sub-blocks, finished, valid, frames, frame pixels, longest side.
    def step(pos, in_chain, done, valid, frames, pixels, longest):
        b = byte(pos)
        width, height = le16(pos + 5), le16(pos + 7)
        is_frame = ~in_chain & tf.equal(b, 0x2C)
        after_frame = pos + 10 + _color_table_bytes(byte(pos + 9)) + 1  # descriptor, colour table, LZW size
        next_pos = tf.where(
            in_chain, pos + tf.maximum(b, 0) + 1, tf.where(is_frame, after_frame, pos + 2)  # 0x21: ext label
        )
        ended = tf.where(in_chain, b < 0, ~(tf.equal(b, 0x21) | is_frame))  # trailer, bad byte or the end
        valid = tf.where(ended, ~in_chain & tf.equal(b, 0x3B), valid)
        return (
            next_pos,
            tf.where(in_chain, b > 0, True),
            ended,
            valid,
            frames + tf.cast(is_frame, tf.int64),
            pixels + tf.where(is_frame, width * height, 0),
            tf.maximum(longest, tf.where(is_frame, tf.maximum(width, height), 0)),
        )

    start = 13 + _color_table_bytes(byte(10))
    zero = tf.constant(0, tf.int64)
    _, _, done, valid, frames, pixels, longest = tf.while_loop(
        lambda pos, in_chain, done, *_: ~done,
        step,
        (start, tf.constant(False), tf.constant(False), tf.constant(False), zero, zero, zero),
        maximum_iterations=MAX_GIF_BLOCKS,
    )
    return frames, pixels, longest, done & valid


def _jpeg_scans(data: tf.Tensor) -> tf.Tensor:
    """Start-of-scan markers (FF DA) in a JPEG. Entropy-coded data stuffs every FF with 00, so the count is
    never below the scans libjpeg reads (a marker segment's payload may add more: an EXIF thumbnail adds one)."""
    return tf.cast(tf.size(tf.strings.split(data, sep=b"\xff\xda")) - 1, tf.int64)


def _check_claimed_size(
    data: tf.Tensor, max_side: int, max_pixels: int, max_scans: int, max_frames: int
) -> list[tf.Operation]:
    """Assertions that fail (InvalidArgument) unless the header is one of the four formats, whole, and claims
    at most max_side on a side and max_pixels in all, and the data has at most max_scans JPEG scans or
    max_frames GIF frames. Nothing is decoded: JPEG's size comes from its SOF marker through
    extract_jpeg_shape (libjpeg's header reader), GIF frames from their descriptors, the others' from fixed
    header fields."""
    header = _header(data)
    length = tf.strings.length(data)

    def starts_with(magic: bytes) -> tf.Tensor:
        return tf.equal(tf.strings.substr(data, 0, len(magic)), magic)

    is_jpeg, is_png, is_gif, is_bmp = (starts_with(m) for m in (_JPEG_MAGIC, _PNG_MAGIC, _GIF_MAGIC, _BMP_MAGIC))
    no_size = tf.zeros([2], tf.int64)
    # [width, height]; BMP stores a signed height (negative = top-down rows).
    size = tf.case(
        [
            (is_jpeg, lambda: tf.reverse(tf.io.extract_jpeg_shape(data, output_type=tf.int64)[:2], [0])),
            (is_png, lambda: tf.stack([_uint(header, 16, 4, True), _uint(header, 20, 4, True)])),
            (is_gif, lambda: tf.stack([_uint(header, 6, 2, False), _uint(header, 8, 2, False)])),
            (is_bmp, lambda: tf.abs(tf.stack([_int32_le(header, 18), _int32_le(header, 22)]))),
        ],
        default=lambda: no_size,
    )
    complete = tf.case(
        [
            (is_png, lambda: (length >= 24) & tf.equal(tf.strings.substr(data, 12, 4), b"IHDR")),
            (is_gif, lambda: length >= 10),
            (is_bmp, lambda: length >= _HEADER_BYTES),
        ],
        default=lambda: tf.constant(True),
    )
    width, height = size[0], size[1]
    within = (width <= max_side) & (height <= max_side) & (width * height <= max_pixels)
    zero = tf.constant(0, tf.int64)
    frames, frame_pixels, longest_frame_side, walkable = tf.cond(
        is_gif & complete, lambda: _gif_frames(data), lambda: (zero, zero, zero, tf.constant(True))
    )
    scans = tf.cond(is_jpeg, lambda: _jpeg_scans(data), lambda: zero)
    return [
        tf.debugging.Assert(
            is_jpeg | is_png | is_gif | is_bmp, ["unknown image format: expected JPEG, PNG, GIF or BMP"]
        ),
        tf.debugging.Assert(complete, ["truncated image header"]),
        tf.debugging.Assert(
            within,
            [
                tf.strings.format(
                    "image header claims {}x{} pixels; at most {} on a side and {} in all are decoded",
                    (width, height, max_side, max_pixels),
                )
            ],
        ),
        tf.debugging.Assert(
            walkable, [f"GIF block structure is cut short, invalid, or longer than {MAX_GIF_BLOCKS} blocks"]
        ),
        tf.debugging.Assert(
            (longest_frame_side <= max_side) & (frame_pixels <= max_pixels),
            [
                tf.strings.format(
                    "GIF frames claim {} pixels in all and {} on their longest side; at most {} on a side and "
                    "{} in all are decoded",
                    (frame_pixels, longest_frame_side, max_side, max_pixels),
                )
            ],
        ),
        tf.debugging.Assert(
            scans <= max_scans,
            [tf.strings.format("the JPEG has {} scans; at most {} are decoded", (scans, max_scans))],
        ),
        tf.debugging.Assert(
            frames <= max_frames,
            [tf.strings.format("the GIF has {} frames; at most {} are decoded", (frames, max_frames))],
        ),
    ]


def _decode(encoded: tf.Tensor, max_side: int, max_pixels: int, max_scans: int, max_frames: int) -> tf.Tensor:
    """One input string (base64 text or raw bytes) -> uint8 RGB image [h, w, 3], its header checked first."""
    # Encoded images always contain bytes outside the base64 alphabet, so base64 text is unambiguous.
    data = tf.cond(
        tf.strings.regex_full_match(encoded, _BASE64_TEXT),
        lambda: tf.io.decode_base64(
            tf.strings.regex_replace(tf.strings.regex_replace(encoded, r"\+", "-"), "/", "_")
        ),
        lambda: encoded,
    )
    # Without the dependency the decoder runs alongside the checks instead of after them.
    with tf.control_dependencies(_check_claimed_size(data, max_side, max_pixels, max_scans, max_frames)):
        data = tf.identity(data)
    # decode_image's JPEG path uses libjpeg's fast integer IDCT (off by up to 5 levels from PIL); the
    # accurate one with fancy upsampling decodes exactly as PIL does.
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )


def build_preprocess(
    pre: Preprocessing,
    max_side: int = MAX_IMAGE_SIDE,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_scans: int = MAX_JPEG_SCANS,
    max_frames: int = MAX_ANIMATION_FRAMES,
):
    mean = tf.constant(pre.image_mean, tf.float32)
    std = tf.constant(pre.image_std, tf.float32)

    def preprocess_one(encoded: tf.Tensor) -> tf.Tensor:
        x = tf.cast(_decode(encoded, max_side, max_pixels, max_scans, max_frames), tf.float32)
        if pre.do_resize:
            x = _pil_resize(x, pre.height, pre.width, pre.resize_method)
        if pre.do_rescale:
            x = x * pre.rescale_factor
        if pre.do_normalize:
            x = (x - mean) / std
        return tf.ensure_shape(x, [pre.height, pre.width, 3])

    def preprocess(strings: tf.Tensor) -> tf.Tensor:
        # Per element: images in one request may differ in format and size.
        return tf.map_fn(
            preprocess_one, strings, fn_output_signature=tf.TensorSpec([pre.height, pre.width, 3], tf.float32)
        )

    return preprocess


def _score_fn(config: dict):
    """The transformers image-classification pipeline's default score function for this config."""
    problem_type = config.get("problem_type")
    if problem_type == "regression":
        return tf.identity
    if problem_type == "multi_label_classification" or len(config["id2label"]) == 1:
        return tf.sigmoid
    return tf.nn.softmax


def load_keras_classifier(checkpoint_dir: Path) -> keras_hub.models.ViTImageClassifier:
    config = json.loads((checkpoint_dir / "config.json").read_text())
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"keras-hub ViT uses exact GELU; checkpoint has {config['hidden_act']}")
    # keras-hub's ViT defaults to epsilon 1e-6; HF configs carry 1e-12 and logits drift by ~2e-4 without it.
    backbone = keras_hub.models.ViTBackbone.from_preset(
        str(checkpoint_dir), layer_norm_epsilon=config.get("layer_norm_eps", 1e-12)
    )
    return keras_hub.models.ViTImageClassifier.from_preset(
        str(checkpoint_dir), backbone=backbone, preprocessor=None
    )


def _warmup_requests(name: str, pre: Preprocessing) -> list[prediction_log_pb2.PredictionLog]:
    """Requests TF Serving replays at load: both signatures, JPEG and PNG, batch 1 and a full-ish batch."""
    ramp = tf.cast(tf.linspace(0.0, 255.0, pre.height * pre.width * 3), tf.uint8)
    image = tf.reshape(ramp, [pre.height, pre.width, 3])
    encoded = [tf.io.encode_jpeg(image).numpy(), tf.io.encode_png(image).numpy()]
    texts = [tf.io.encode_base64(tf.constant(e)).numpy() for e in encoded]
    batches = [texts[:1], texts[1:], texts * 4]
    logs = []
    for signature in ("serving_default", "top_k"):
        for batch in batches:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=name, signature_name=signature)
            )
            request.inputs["string_input"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            logs.append(
                prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            )
    for batch in (encoded[:1], encoded * 4):
        request = classification_pb2.ClassificationRequest(
            model_spec=model_pb2.ModelSpec(name=name, signature_name=CLASSIFY_SIGNATURE)
        )
        for data in batch:
            request.input.example_list.examples.add().features.feature[IMAGE_FEATURE].bytes_list.value.append(data)
        logs.append(
            prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))
        )
    return logs


def export_saved_model(
    checkpoint: str | Path,
    model_base: Path,
    name: str = "hf-vit",
    version: int | None = None,
    top_k: int = 5,
    batching: BatchingParameters | None = None,
    max_image_side: int = MAX_IMAGE_SIDE,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_jpeg_scans: int = MAX_JPEG_SCANS,
    max_gif_frames: int = MAX_ANIMATION_FRAMES,
) -> Path:
    """Write ``<model_base>/<name>/<version>/`` and return it; ``version=None`` takes the next free one."""
    checkpoint_dir = resolve_checkpoint(checkpoint)
    config = json.loads((checkpoint_dir / "config.json").read_text())
    pre_cfg_path = checkpoint_dir / "preprocessor_config.json"
    pre_cfg = json.loads(pre_cfg_path.read_text()) if pre_cfg_path.exists() else {}
    pre = Preprocessing.from_config(pre_cfg, config["image_size"])

    model_dir = Path(model_base) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    target = model_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} already exists")

    classifier = load_keras_classifier(checkpoint_dir)
    num_labels = len(config["id2label"])
    labels = tf.constant([config["id2label"][str(i)] for i in range(num_labels)])
    k = min(top_k, num_labels)
    preprocess = build_preprocess(pre, max_image_side, max_image_pixels, max_jpeg_scans, max_gif_frames)
    scores_of = _score_fn(config)

    def scores(strings):
        return scores_of(classifier(preprocess(strings), training=False))

    def serving_default(string_input):
        s = scores(string_input)
        return {"label": tf.gather(labels, tf.argmax(s, axis=-1)), "confidence": tf.reduce_max(s, axis=-1)}

    def top_k_fn(string_input):
        best = tf.math.top_k(scores(string_input), k=k)
        return {"labels": tf.gather(labels, best.indices), "scores": best.values}

    def classify(inputs):
        image = tf.io.parse_example(inputs, {IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})[IMAGE_FEATURE]
        best = tf.math.top_k(scores(image), k=k)
        return {"classes": tf.gather(labels, best.indices), "scores": best.values}

    def pixel_values(pixel_values):
        return {"logits": classifier(tf.transpose(pixel_values, [0, 2, 3, 1]), training=False)}

    strings_spec = [tf.TensorSpec([None], tf.string, name="string_input")]
    archive = keras.export.ExportArchive()
    archive.track(classifier)
    archive.add_endpoint("serving_default", serving_default, input_signature=strings_spec)
    archive.add_endpoint("top_k", top_k_fn, input_signature=strings_spec)
    archive.add_endpoint(
        CLASSIFY_SIGNATURE, classify, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")]
    )
    archive.add_endpoint(
        "pixel_values",
        pixel_values,
        input_signature=[tf.TensorSpec([None, 3, pre.height, pre.width], tf.float32, name="pixel_values")],
    )

    # Build beside the target and rename: TF Serving polls model_dir and must never see a half-written version.
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        archive.write_out(str(staging), verbose=False)
        set_method_names(staging, {CLASSIFY_SIGNATURE: Method.CLASSIFY})
        warmup = staging / WARMUP_FILE
        warmup.parent.mkdir(parents=True)
        with tf.io.TFRecordWriter(str(warmup)) as writer:
            for record in _warmup_requests(name, pre):
                writer.write(record.SerializeToString())
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (model_dir / BATCHING_FILE).write_text((batching or BatchingParameters()).to_text_proto())
    log.info("exported %s -> %s", checkpoint, target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="local directory or hub id")
    parser.add_argument("--model-base", type=Path, default=Path("models/vit-serving"))
    parser.add_argument("--name", default="hf-vit")
    parser.add_argument("--version", type=int, default=None, help="default: next free version number")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--max-image-side", type=int, default=MAX_IMAGE_SIDE, help="refused above, undecoded")
    parser.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS, help="refused above, undecoded")
    parser.add_argument("--max-jpeg-scans", type=int, default=MAX_JPEG_SCANS, help="refused above, undecoded")
    parser.add_argument("--max-gif-frames", type=int, default=MAX_ANIMATION_FRAMES, help="refused above, undecoded")
    defaults = BatchingParameters()
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--batch-timeout-micros", type=int, default=defaults.batch_timeout_micros)
    parser.add_argument("--max-enqueued-batches", type=int, default=defaults.max_enqueued_batches)
    parser.add_argument("--num-batch-threads", type=int, default=defaults.num_batch_threads)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    batching = BatchingParameters(
        args.max_batch_size, args.batch_timeout_micros, args.max_enqueued_batches, args.num_batch_threads
    )
    print(
        export_saved_model(
            args.checkpoint,
            args.model_base,
            args.name,
            args.version,
            args.top_k,
            batching,
            args.max_image_side,
            args.max_image_pixels,
            args.max_jpeg_scans,
            args.max_gif_frames,
        )
    )


if __name__ == "__main__":
    main()
