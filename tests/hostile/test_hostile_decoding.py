"""Images whose decoding work is multiplied beyond their pixel count, and decoding that must not starve the rest.

A progressive JPEG of 1000 identical AC-refinement scans (a few KB here, 71 KB at 4096x4096 in the attack)
makes libjpeg pass over every coefficient 1000 times: seconds of CPU per upload, while its header's size
passes every pixel limit. It is refused from its structure on every image input of the image generation
service and of the ViT server, and inside the exported SavedModel itself (so the real tensorflow/serving
image refuses it too). PNGs cut into tens of thousands of chunks and GIFs of thousands of frames likewise.
Decoding runs on a few threads of its own with a bounded queue: held decodes neither stall protocol
parsing on the event loop's default pool nor pile up without bound.
"""

import base64
import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from PIL import Image

from protos import imagegen_pb2 as pb
from protos import imagegen_pb2_grpc as pb_grpc
from services.imagegen import schemas as imagegen_schemas
from services.imagegen.service import create_service
from services.imagegen.settings import ImageGenSettings
from services.kit import decoding
from services.kit.decoding import MAX_ANIMATION_FRAMES, MAX_JPEG_SCANS, MAX_PNG_CHUNKS
from services.kit.testing import ServerThread

VIT_PREDICT = "/v1/models/hf-vit:predict"
HELD_DECODES = 6  # as many as filled asyncio's default pool on a 2-core machine
WAIT_S = 60  # generous: the refused work takes forever (held) or seconds, the answers well under a second


def progressive_jpeg(side: int, scans: int | None = None) -> bytes:
    """A flat grey progressive JPEG (Pillow writes 6 scans for grey); with `scans`, its last AC-refinement
    scan repeated until the file has that many: each copy is valid and costs the decoder a full pass."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    if scans is None:
        return data
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * (scans - data.count(b"\xff\xda")) + data[end:]


def png_of_chunks(chunks: int) -> bytes:
    """A valid 64x64 grey PNG whose pixel data is cut into `chunks` IDAT chunks (most of them empty)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = zlib.compress(b"".join(b"\0" + bytes(64) for _ in range(64)))
    header = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels)
        + chunk(b"IDAT", b"") * (chunks - 3)
        + chunk(b"IEND", b"")
    )


def gif_of_frames(frames: int) -> bytes:
    """A 1x1 GIF of `frames` one-pixel frames (each an image descriptor and its LZW data)."""
    screen = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\xff\xff\xff\x00\x00\x00"
    frame = b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00" + b"\x02\x02\x44\x01\x00"
    return screen + frame * frames + b"\x3b"


HOSTILE_JPEG = progressive_jpeg(512, scans=1000)


def test_the_hostile_files_are_what_they_claim():
    assert decoding.jpeg_scan_count(HOSTILE_JPEG, 10**6) == 1000
    assert decoding.jpeg_scan_count(progressive_jpeg(512), 10**6) == 6
    assert decoding.png_chunk_count(png_of_chunks(MAX_PNG_CHUNKS + 1), 10**6) == MAX_PNG_CHUNKS + 1
    assert decoding.gif_frames(gif_of_frames(3)).count == 3
    assert Image.open(io.BytesIO(gif_of_frames(3))).n_frames == 3


# -- imagegen, on the shared platform ----------------------------------------------------------------


def edit_multipart(platform, image: bytes, path: str = "/v1/images/edits", **fields) -> httpx.Response:
    data = {"prompt": "a cat", "steps": "2", **fields} if path.endswith("edits") else {"steps": "2", **fields}
    return httpx.post(
        platform.rest_url + path, files={"image": ("x.jpg", image)}, data=data, timeout=WAIT_S
    )


def edit_json(platform, image: bytes) -> httpx.Response:
    url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    body = {"prompt": "a cat", "steps": 2, "images": [{"image_url": url}]}
    return httpx.post(platform.rest_url + "/v1/images/edits", json=body, timeout=WAIT_S)


def oip_image(platform, image: bytes) -> tuple[int, str]:
    client = triton_http.InferenceServerClient(platform.rest_url.removeprefix("http://"), network_timeout=WAIT_S)
    inputs = []
    for name, value in (("prompt", b"a cat"), ("image", image)):
        entry = triton_http.InferInput(name, [1], "BYTES")
        entry.set_data_from_numpy(np.array([value], dtype=np.object_))
        inputs.append(entry)
    try:
        client.infer("imagegen", inputs, parameters={"steps": 2})
    except Exception as error:  # tritonclient's InferenceServerException carries the status and message
        return int(error.status()), error.message()
    return 200, ""


def grpc_generate(platform, image: bytes) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(platform.grpc_target) as channel:
        try:
            pb_grpc.ImageGenerationStub(channel).Generate(
                pb.GenerateRequest(prompt="a cat", image=image, steps=2), timeout=WAIT_S
            )
        except grpc.RpcError as error:
            return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def rest_answer(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.text


IMAGEGEN_INPUTS = {
    "edits multipart": lambda platform, image: rest_answer(edit_multipart(platform, image)),
    "variations": lambda platform, image: rest_answer(
        edit_multipart(platform, image, "/v1/images/variations", response_format="b64_json")
    ),
    "edits JSON data: URL": lambda platform, image: rest_answer(edit_json(platform, image)),
    "OIP image input": oip_image,
    "gRPC Generate": grpc_generate,
}


@pytest.mark.parametrize("path", list(IMAGEGEN_INPUTS))
def test_many_scan_jpeg_is_refused_on_every_imagegen_input(platform, path):
    status, message = IMAGEGEN_INPUTS[path](platform, HOSTILE_JPEG)
    assert status in (400, grpc.StatusCode.INVALID_ARGUMENT), (status, message)
    assert f"more than {MAX_JPEG_SCANS} scans" in message
    platform.assert_alive()


@pytest.mark.parametrize("path", ["edits multipart", "OIP image input"])
def test_an_ordinary_progressive_jpeg_is_still_accepted(platform, path):
    status, message = IMAGEGEN_INPUTS[path](platform, progressive_jpeg(128))
    assert status == 200, message


def test_png_of_too_many_chunks_is_refused(platform):
    response = edit_multipart(platform, png_of_chunks(MAX_PNG_CHUNKS + 10))
    assert response.status_code == 400, response.text
    assert f"more than {MAX_PNG_CHUNKS} chunks" in response.json()["error"]["message"]
    assert edit_multipart(platform, png_of_chunks(100)).status_code == 200


# -- ViT: the server's own checks, and the SavedModel graph ---------------------------------------------


def vit_rest(platform, image: bytes) -> httpx.Response:
    body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
    return httpx.post(platform.vit_rest_url + VIT_PREDICT, json=body, timeout=WAIT_S)


def test_vit_rest_and_grpc_refuse_many_scans_before_queuing(platform):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    response = vit_rest(platform, HOSTILE_JPEG)
    assert response.status_code == 400, response.text
    assert f"more than {MAX_JPEG_SCANS} scans" in response.json()["error"]

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hf-vit"
    tensor = request.inputs["string_input"]
    tensor.dtype = 7  # DT_STRING
    tensor.tensor_shape.dim.add(size=1)
    tensor.string_val.append(HOSTILE_JPEG)
    with grpc.insecure_channel(platform.vit_grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as failure:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=WAIT_S)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"more than {MAX_JPEG_SCANS} scans" in failure.value.details()

    assert vit_rest(platform, progressive_jpeg(128)).status_code == 200


def test_vit_refuses_a_gif_of_too_many_frames(platform):
    response = vit_rest(platform, gif_of_frames(MAX_ANIMATION_FRAMES + 1))
    assert response.status_code == 400, response.text
    assert f"string_input[0]: the GIF has {MAX_ANIMATION_FRAMES + 1} frames" in response.json()["error"]
    assert vit_rest(platform, gif_of_frames(3)).status_code == 200


def test_the_saved_model_itself_refuses_many_scans_and_frames(models_dir):
    """What the real tensorflow/serving image runs: the signature, called directly."""
    import tensorflow as tf

    version = models_dir / "vit-serving" / "hf-vit" / "1"
    assert (version / "saved_model.pb").is_file(), f"no exported ViT at {version}: run make models"
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    for hostile, message in (
        (HOSTILE_JPEG, "the JPEG has 1000 scans"),
        (gif_of_frames(MAX_ANIMATION_FRAMES + 1), f"the GIF has {MAX_ANIMATION_FRAMES + 1} frames"),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(string_input=tf.constant([hostile]))
    assert serve(string_input=tf.constant([progressive_jpeg(128)]))["label"].shape == (1,)


# -- in-process: what is decoded, where, and when ------------------------------------------------------


@pytest.fixture(scope="module")
def imagegen(models_dir):
    settings = ImageGenSettings(
        model=str(models_dir / "imagegen" / "stable-diffusion"),
        safety_checker=False,
        default_steps=2,
        max_pixels=64 * 64,
        max_wait_ms=0,
        threads=1,
        log_level="warning",
    )
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def test_parameters_are_refused_before_any_image_is_decoded(imagegen, monkeypatch):
    decoded = []
    monkeypatch.setattr(imagegen_schemas, "decode_image", lambda *args, **kwargs: decoded.append(args))
    monkeypatch.setattr(imagegen_schemas, "reference_sheet", lambda *args, **kwargs: decoded.append(args))
    for path in ("/v1/images/edits", "/v1/images/variations"):
        response = edit_multipart(imagegen, HOSTILE_JPEG, path, steps="1000")
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "steps"
    sheet = httpx.post(
        imagegen.rest_url + "/v1/images/edits",
        files=[("image[]", ("a.jpg", HOSTILE_JPEG)), ("image[]", ("b.jpg", HOSTILE_JPEG))],
        data={"prompt": "a cat", "n": "1000"},
        timeout=WAIT_S,
    )
    assert sheet.status_code == 400 and sheet.json()["error"]["param"] == "n", sheet.text
    assert decoded == []


def test_grpc_and_oip_parameters_are_refused_before_any_image_is_decoded(imagegen, monkeypatch):
    decoded = []
    monkeypatch.setattr(imagegen_schemas, "decode_image", lambda *args, **kwargs: decoded.append(args))
    with grpc.insecure_channel(imagegen.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.ImageGenerationStub(channel).Generate(
                pb.GenerateRequest(prompt="a cat", image=HOSTILE_JPEG, steps=1000), timeout=WAIT_S
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "steps" in refused.value.details()
    client = triton_http.InferenceServerClient(imagegen.rest_url.removeprefix("http://"), network_timeout=WAIT_S)
    inputs = []
    for name, value in (("prompt", b"a cat"), ("image", progressive_jpeg(64))):
        entry = triton_http.InferInput(name, [1], "BYTES")
        entry.set_data_from_numpy(np.array([value], dtype=np.object_))
        inputs.append(entry)
    with pytest.raises(Exception) as oip_refused:
        client.infer("imagegen", inputs, parameters={"steps": 1000})
    assert int(oip_refused.value.status()) == 400 and "steps" in oip_refused.value.message()
    assert decoded == []


def test_decoding_has_threads_of_its_own_and_a_bounded_queue(imagegen, monkeypatch):
    pool = decoding.DecodePool(threads=2, max_waiting=HELD_DECODES - 2)
    monkeypatch.setattr(decoding, "decode_pool", lambda: pool)
    release, started = threading.Event(), []
    real_decode = imagegen_schemas.decode_image

    def held_decode(*args, **kwargs):
        started.append(threading.get_ident())
        release.wait(WAIT_S)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(imagegen_schemas, "decode_image", held_decode)
    source = progressive_jpeg(64)
    with ThreadPoolExecutor(HELD_DECODES) as senders:
        try:
            edits = [senders.submit(edit_multipart, imagegen, source) for _ in range(HELD_DECODES)]
            deadline = time.monotonic() + WAIT_S
            while pool.pending < HELD_DECODES and time.monotonic() < deadline:
                time.sleep(0.05)
            assert pool.pending == HELD_DECODES, "the edits never reached the decoding threads"
            assert len(started) == 2  # two decode at once; the others wait their turn

            overflow = edit_multipart(imagegen, source)
            assert overflow.status_code == 503 and "Retry-After" in overflow.headers, overflow.text

            # Protocol parsing (asyncio's default pool) is not behind the held decodes.
            unrelated = httpx.post(
                imagegen.rest_url + "/v2/models/imagegen/infer",
                json={
                    "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a ship"]}],
                    "parameters": {"steps": 1},
                },
                timeout=WAIT_S,
            )
            assert unrelated.status_code == 200, unrelated.text
            assert not any(edit.done() for edit in edits)
        finally:
            release.set()
        assert [edit.result().status_code for edit in edits] == [200] * HELD_DECODES
    assert pool.pending == 0
