"""The ViT exporter: parity with PyTorch and the transformers pipeline, TF Serving layout, bad input."""

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline

from services.vit import export
from tests.vit import image_bombs

# Two shared cores: keep both runtimes to one intra-op thread (TF refuses once its runtime is up).
torch.set_num_threads(1)
try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
except RuntimeError:
    pass

SHARED_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "vit" / "hf-vit"
LOGIT_TOL = 1e-3
# Logits on the processor's own pixels: measured 7e-8 to 3e-6. Confidence from image bytes, where resize
# rounding leaves 0-3% of values one uint8 step off PIL: measured 4.6e-4 with this model (3.8e-3 with a
# 0.5-spread random model, which amplifies pixel noise far more than a trained one).
CONFIDENCE_TOL = 2e-3

# (height, width, mode, format): several sizes (down- and up-scaling, both resize orders), alpha and grey.
CASES = [
    (64, 64, "RGB", "PNG"),
    (100, 37, "RGB", "PNG"),
    (37, 100, "RGBA", "PNG"),
    (300, 200, "L", "PNG"),
    (20, 30, "RGB", "JPEG"),
    (240, 320, "RGB", "JPEG"),
    (150, 90, "L", "JPEG"),
    (80, 120, "RGB", "GIF"),
    (90, 70, "RGB", "BMP"),
]


def _image(height: int, width: int, mode: str, seed: int) -> Image.Image:
    """Smooth gradients plus noise: photo-like enough for JPEG, with detail the resize has to filter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    rgb = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    if mode == "RGBA":
        alpha = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
        return Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA")
    return Image.fromarray(rgb).convert(mode)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    if (SHARED_CHECKPOINT / "model.safetensors").exists():
        return SHARED_CHECKPOINT
    path = tmp_path_factory.mktemp("hf-vit")
    torch.manual_seed(0)
    labels = ["cat", "dog", "bird", "fish", "horse"]
    config = ViTConfig(
        image_size=64,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
        # Ten times the default spread: peaked scores, so pixel differences show in the confidence.
        initializer_range=0.2,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    ViTForImageClassification(config).save_pretrained(path, safe_serialization=True)
    ViTImageProcessor(
        size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vit-serving")


@pytest.fixture(scope="module")
def exported(checkpoint, model_base) -> Path:
    start = time.perf_counter()
    path = export.export_saved_model(checkpoint, model_base)
    print(f"export took {time.perf_counter() - start:.1f} s")
    return path


@pytest.fixture(scope="module")
def served(exported):
    return tf.saved_model.load(str(exported))


@pytest.fixture(scope="module")
def hf_pipeline(checkpoint):
    return pipeline("image-classification", model=str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def images() -> list[tuple[str, bytes]]:
    return [
        (f"{h}x{w} {mode} {fmt}", _encode(_image(h, w, mode, seed), fmt))
        for seed, (h, w, mode, fmt) in enumerate(CASES)
    ]


def _pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_logits_match_pytorch_on_preprocessed_pixels(served, hf_pipeline, images):
    pixels = np.concatenate(
        [
            hf_pipeline.image_processor(_pil(data).convert("RGB"), return_tensors="np")["pixel_values"]
            for _, data in images
        ]
    )
    with torch.no_grad():
        expected = hf_pipeline.model(torch.from_numpy(pixels)).logits.numpy()
    logits = served.signatures["pixel_values"](pixel_values=tf.constant(pixels))["logits"].numpy()
    print(f"max |logit diff| on processor pixels: {np.abs(logits - expected).max():.2e}")
    np.testing.assert_allclose(logits, expected, atol=LOGIT_TOL, rtol=0)
    np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))


def test_in_graph_preprocessing_matches_image_processor(checkpoint, hf_pipeline, images):
    processor = hf_pipeline.image_processor
    pre = export.Preprocessing.from_config(
        json.loads((checkpoint / "preprocessor_config.json").read_text()),
        json.loads((checkpoint / "config.json").read_text())["image_size"],
    )
    preprocess = export.build_preprocess(pre)
    step = max(processor.rescale_factor / s for s in processor.image_std)
    for name, data in images:
        expected = processor(_pil(data).convert("RGB"), return_tensors="np")["pixel_values"][0]
        got = preprocess(tf.constant([base64.urlsafe_b64encode(data)])).numpy()[0].transpose(2, 0, 1)
        diff = np.abs(got - expected)
        print(f"{name}: max diff {diff.max() / step:.2f} steps, {np.mean(diff > 1e-5):.2%} of values off")
        # Downscaling matches PIL to one uint8 step; upscaling (a small image to the model's size) differs
        # by up to two steps in ~10% of values (PIL's and TF's bilinear upsampling kernels round apart).
        upscaled = min(_pil(data).size) < min(pre.height, pre.width)
        max_steps, max_share = (2, 0.12) if upscaled else (1, 0.05)
        assert diff.max() <= max_steps * step + 1e-5, name
        assert np.mean(diff > 1e-5) < max_share, name


def test_end_to_end_matches_pipeline(served, hf_pipeline, images):
    strings = tf.constant([base64.urlsafe_b64encode(data) for _, data in images])
    out = served.signatures["serving_default"](string_input=strings)
    top = served.signatures["top_k"](string_input=strings)
    worst = 0.0
    for i, (name, data) in enumerate(images):
        expected = hf_pipeline(_pil(data), top_k=None)
        scores = {r["label"]: r["score"] for r in expected}
        label = out["label"][i].numpy().decode()
        confidence = float(out["confidence"][i])
        worst = max(worst, abs(confidence - scores[label]))
        # Same label, unless the pipeline's own top two are closer than the measured tolerance.
        assert label == expected[0]["label"] or expected[0]["score"] - scores[label] < CONFIDENCE_TOL, name
        assert confidence == pytest.approx(scores[label], abs=CONFIDENCE_TOL), name
        k_labels = [x.decode() for x in top["labels"][i].numpy()]
        assert k_labels[0] == label and float(top["scores"][i][0]) == pytest.approx(confidence, abs=1e-6)
        assert len(k_labels) == min(5, len(scores))
        for k_label, k_score in zip(k_labels, top["scores"][i].numpy(), strict=True):
            assert k_score == pytest.approx(scores[k_label], abs=CONFIDENCE_TOL), name
    print(f"max |confidence - pipeline score|: {worst:.2e}")


def test_standard_base64_and_raw_bytes_are_accepted(served, images):
    data = images[1][1]
    strings = [
        base64.urlsafe_b64encode(data),
        base64.b64encode(data),
        base64.urlsafe_b64encode(data).rstrip(b"="),
        data,
    ]
    out = served.signatures["serving_default"](string_input=tf.constant(strings))
    assert len(set(out["label"].numpy())) == 1
    np.testing.assert_allclose(out["confidence"].numpy(), out["confidence"].numpy()[0], atol=1e-6)


@pytest.mark.parametrize(
    "payload",
    [
        b"not an image, not base64!",
        base64.urlsafe_b64encode(b"valid base64 of text that is no image"),
        b"",
        b"QUJDR",
        base64.urlsafe_b64encode(b"\x89PNG\r\n\x1a\n truncated"),
    ],
    ids=["not-base64", "base64-not-image", "empty", "bad-base64-length", "truncated-png"],
)
def test_bad_input_is_an_invalid_argument_and_the_model_keeps_working(served, images, payload):
    good = base64.urlsafe_b64encode(images[0][1])
    with pytest.raises(tf.errors.InvalidArgumentError):
        served.signatures["serving_default"](string_input=tf.constant([good, payload]))
    assert served.signatures["serving_default"](string_input=tf.constant([good]))["label"].shape == (1,)


def _peak_growth_mb(run) -> float:
    """How far this process's peak resident memory rises while `run()` runs."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM back to the current resident size

    def status_kib(field: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
        return int(line.split()[1])

    before = status_kib("VmRSS")
    run()
    return (status_kib("VmHWM") - before) / 1024


@pytest.mark.parametrize("fmt", image_bombs.FORMATS)
def test_header_claiming_a_huge_image_is_refused_undecoded(served, fmt):
    data = image_bombs.claiming(fmt, 60000, 60000)
    assert len(data) < 1000
    with pytest.raises(tf.errors.InvalidArgumentError, match="image header claims 60000x60000 pixels"):
        served.signatures["serving_default"](string_input=tf.constant([base64.urlsafe_b64encode(data)]))


@pytest.mark.parametrize(
    ("width", "height"),
    [(8193, 16), (16, 8193), (7100, 7100)],
    ids=["too-wide", "too-tall", "50-megapixels"],
)
def test_side_and_pixel_limits_hold_for_real_images(served, width, height):
    data = image_bombs.zeros("PNG", width, height)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"claims {width}x{height} pixels"):
        served.signatures["serving_default"](string_input=tf.constant([data]))


def test_decompression_bomb_is_refused_before_it_is_decoded(served):
    # 140 KB that decodes to 430 MB of RGB (and 1.7 GB as floats) when its header is not read first.
    data = image_bombs.zeros("PNG", 12000, 12000)

    def run():
        with pytest.raises(tf.errors.InvalidArgumentError, match="claims 12000x12000"):
            served.signatures["serving_default"](string_input=tf.constant([data]))

    assert _peak_growth_mb(run) < 100


@pytest.mark.parametrize(
    ("screen", "frames", "claim"),
    [
        ((8, 8), [(8000, 8000)], "GIF frames claim 64000000 pixels in all and 8000 on their longest side"),
        ((8, 8), [(8, 8), (8000, 8000)], "GIF frames claim 64000064 pixels in all"),
        ((8, 8), [(8, 8), (9000, 10)], "and 9000 on their longest side"),
        ((2000, 2000), [(2000, 2000)] * 7, "GIF frames claim 28000000 pixels in all"),
    ],
    ids=["small-screen-huge-frame", "huge-second-frame", "too-wide-second-frame", "many-frames"],
)
def test_every_gif_frame_is_checked_undecoded(served, screen, frames, claim):
    # A 48 KB GIF with an 8x8 screen and an 8000x8000 frame decoded to 1.75 GB at the peak.
    data = image_bombs.gif_frames(screen, frames)
    with pytest.raises(tf.errors.InvalidArgumentError, match=claim):
        served.signatures["serving_default"](string_input=tf.constant([data]))


def test_animations_within_the_limits_still_classify(served):
    data = image_bombs.gif_frames((64, 48), [(64, 48)] * 5)
    assert served.signatures["serving_default"](string_input=tf.constant([data]))["label"].shape == (1,)


def test_gif_block_walk_is_bounded(served):
    tiny = image_bombs.tiny("GIF")
    table_end = 13 + 3 * 2 ** ((tiny[10] & 7) + 1)
    comment = b"\x21\xfe" + b"\x01x" * export.MAX_GIF_BLOCKS + b"\x00"  # one-byte sub-blocks
    for payload in (tiny[:table_end] + comment + tiny[table_end:], tiny[:-1]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="GIF block structure is cut short, invalid"):
            served.signatures["serving_default"](string_input=tf.constant([payload]))


def test_header_limits_are_configurable(checkpoint):
    pre = export.Preprocessing.from_config(
        json.loads((checkpoint / "preprocessor_config.json").read_text()),
        json.loads((checkpoint / "config.json").read_text())["image_size"],
    )
    preprocess = tf.function(export.build_preprocess(pre, max_side=100, max_pixels=100 * 50))
    small = image_bombs.zeros("GIF", 100, 50)
    assert preprocess(tf.constant([small])).shape[0] == 1
    for width, height in [(101, 10), (10, 101), (100, 51)]:
        with pytest.raises(tf.errors.InvalidArgumentError, match="at most 100 on a side and 5000 in all"):
            preprocess(tf.constant([image_bombs.zeros("GIF", width, height)]))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "unknown image format"),
        (b"II*\x00", "unknown image format"),
        (image_bombs.tiny("PNG")[:20], "truncated image header"),
        (image_bombs.tiny("GIF")[:8], "truncated image header"),
        (image_bombs.tiny("BMP")[:20], "truncated image header"),
        (image_bombs.tiny("JPEG")[:40], "Invalid JPEG data"),
    ],
    ids=["webp", "tiff", "png", "gif", "bmp", "jpeg"],
)
def test_unknown_formats_and_truncated_headers_are_refused(served, payload, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        served.signatures["serving_default"](string_input=tf.constant([payload]))


def _batching_parameters_type():
    """TF Serving's BatchingParameters (session_bundle_config.proto), which tensorflow-serving-api omits."""
    file = descriptor_pb2.FileDescriptorProto(
        name="test_batching.proto",
        package="test",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="BatchingParameters")
    wrapped = {
        "max_batch_size": 1,
        "batch_timeout_micros": 2,
        "max_enqueued_batches": 3,
        "num_batch_threads": 4,
    }
    for field_name, number in wrapped.items():
        message.field.add(
            name=field_name,
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
            type_name=".google.protobuf.Int64Value",
        )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("test.BatchingParameters"))


def test_tf_serving_layout_and_warmup(exported, served, model_base):
    assert exported == model_base / "hf-vit" / "1"
    assert (exported / "saved_model.pb").is_file()
    assert (exported / "variables" / "variables.index").is_file()
    assert list((exported / "variables").glob("variables.data-*"))
    assert not [p for p in (model_base / "hf-vit").iterdir() if p.name.startswith(".")], "staging dir left"

    records = list(tf.data.TFRecordDataset(str(exported / export.WARMUP_FILE)).as_numpy_iterator())
    assert records
    kinds = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        kinds.add(log.WhichOneof("log_type"))
        if log.HasField("classify_log"):
            # Classify records: serialized tf.Examples carrying the image, for the classify signature.
            request = log.classify_log.request
            examples = [e.SerializeToString() for e in request.input.example_list.examples]
            outputs = served.signatures[request.model_spec.signature_name](inputs=tf.constant(examples))
            assert outputs["classes"].shape[0] == len(examples) == outputs["scores"].shape[0]
            continue
        request = log.predict_log.request
        assert request.model_spec.name == "hf-vit"
        # Replay it the way TF Serving does at load time.
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        outputs = served.signatures[request.model_spec.signature_name](**inputs)
        assert all(len(value) == len(inputs["string_input"]) for value in outputs.values())
    assert kinds == {"predict_log", "classify_log"}

    params = text_format.Parse(
        (model_base / "hf-vit" / export.BATCHING_FILE).read_text(), _batching_parameters_type()()
    )
    assert params.max_batch_size.value == export.BatchingParameters().max_batch_size


def test_version_auto_increment_and_command(exported, checkpoint, model_base, tmp_path):
    names = ["1", "3", "10", "not-a-version", ".4-staging"]
    for name in names:
        (tmp_path / name).mkdir()
    assert export.next_version(tmp_path) == 11
    assert export.next_version(tmp_path / "missing") == 1

    with pytest.raises(FileExistsError):
        export.export_saved_model(checkpoint, model_base, version=1)
    export.main(["--checkpoint", str(checkpoint), "--model-base", str(model_base), "--max-batch-size", "8"])
    assert (model_base / "hf-vit" / "2" / "saved_model.pb").is_file()
    assert "max_batch_size { value: 8 }" in (model_base / "hf-vit" / export.BATCHING_FILE).read_text()
