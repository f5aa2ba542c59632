"""Image generation over the Open Inference Protocol, driven by Triton's own clients (HTTP and gRPC): the same
pixels as the REST routes, the same limits, and uploads bounded before they are decoded."""

import base64
import io
import struct
import zlib

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.utils import InferenceServerException

from services.imagegen.service import create_service
from services.kit.testing import ServerThread

MAX_INPUT_PIXELS = 128 * 128
SOURCE = np.random.default_rng(1).integers(0, 255, (80, 72, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def server(make_settings):
    settings = make_settings(max_wait_ms=0, max_input_pixels=MAX_INPUT_PIXELS)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def client_for(server, module):
    target = server.rest_url.removeprefix("http://") if module is triton_http else server.grpc_target
    return module.InferenceServerClient(target)


def tensor(module, name: str, array: np.ndarray):
    datatype = "BYTES" if array.dtype == np.object_ else "UINT8"
    entry = module.InferInput(name, list(array.shape), datatype)
    entry.set_data_from_numpy(array)
    return entry


def encoded(data: bytes) -> np.ndarray:
    array = np.empty(1, dtype=np.object_)
    array[0] = data
    return array


def prompt(module, text: str = "a castle"):
    return tensor(module, "prompt", encoded(text.encode()))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose header says width x height (the IHDR rewritten, its CRC fixed)."""
    data = bytearray(png(Image.new("RGB", (8, 8), (200, 30, 60))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def task_of(result) -> str:
    response = result.get_response()
    if isinstance(response, dict):
        return response["parameters"]["task"]
    return response.parameters["task"].string_param


def rest_edit(server, source: bytes, mask: bytes | None = None, **fields) -> list[bytes]:
    files = [("image", ("source.png", source, "image/png"))]
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    response = httpx.post(
        server.rest_url + "/v1/images/edits",
        files=files,
        data={key: str(value) for key, value in fields.items()},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]


@pytest.mark.parametrize("module", [triton_http, triton_grpc], ids=["http", "grpc"])
def test_health_and_metadata_tell_a_client_what_to_send(server, module):
    client = client_for(server, module)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("imagegen")
    metadata = client.get_model_metadata("imagegen", **({"as_json": True} if module is triton_grpc else {}))
    inputs = {
        entry["name"]: (entry["datatype"], [int(dim) for dim in entry["shape"]])
        for entry in metadata["inputs"]
    }
    assert inputs == {
        "prompt": ("BYTES", [1]),
        "image": ("BYTES", [1]),
        "image_pixels": ("UINT8", [-1, -1, 3]),
        "mask": ("BYTES", [1]),
        "mask_pixels": ("UINT8", [-1, -1]),
    }
    outputs = {entry["name"]: entry["datatype"] for entry in metadata["outputs"]}
    assert outputs["images"] == "UINT8" and outputs["images_png"] == "BYTES" and outputs["seeds"] == "INT64"


@pytest.mark.parametrize("module", [triton_http, triton_grpc], ids=["http", "grpc"])
def test_text_to_image_equals_rest_for_the_same_seed(server, module, pixels):
    parameters = dict(
        n=2,
        width=64,
        height=64,
        steps=3,
        guidance_scale=5.5,
        seed=99,
        scheduler="lms",
        negative_prompt="rain",
    )
    result = client_for(server, module).infer("imagegen", [prompt(module)], parameters=parameters)
    rest = httpx.post(
        server.rest_url + "/v1/images/generations",
        json={
            "prompt": "a castle",
            "size": "64x64",
            **{k: v for k, v in parameters.items() if k not in ("width", "height")},
        },
        timeout=60,
    )
    assert rest.status_code == 200, rest.text
    rest_pngs = [base64.b64decode(item["b64_json"]) for item in rest.json()["data"]]
    images = result.as_numpy("images")
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    assert result.as_numpy("images_png").tolist() == rest_pngs
    for image, rest_png in zip(images, rest_pngs, strict=True):
        assert np.array_equal(image, pixels(rest_png))
    assert result.as_numpy("seeds").tolist() == [99, 100]
    assert task_of(result) == "text-to-image"
    assert result.as_numpy("nsfw_content_detected") is None  # the tiny checkpoint has no safety checker


def test_image_to_image_from_pixels_or_png_equals_rest_edits(server):
    client = client_for(server, triton_grpc)
    parameters = dict(steps=4, strength=0.5, seed=3)
    from_pixels = client.infer(
        "imagegen", [prompt(triton_grpc), tensor(triton_grpc, "image_pixels", SOURCE)], parameters=parameters
    )
    source_png = png(Image.fromarray(SOURCE))
    http = client_for(server, triton_http)
    from_png = http.infer(
        "imagegen",
        [prompt(triton_http), tensor(triton_http, "image", encoded(source_png))],
        parameters=parameters,
    )
    assert task_of(from_pixels) == task_of(from_png) == "image-to-image"
    assert from_pixels.as_numpy("images").shape == (1, 80, 72, 3)  # the source's size
    assert np.array_equal(from_pixels.as_numpy("images"), from_png.as_numpy("images"))
    assert from_pixels.as_numpy("images_png").tolist() == rest_edit(
        server, source_png, prompt="a castle", **parameters
    )


def test_inpainting_with_a_mask_of_pixels_equals_rest_with_a_mask_file(server):
    client = client_for(server, triton_grpc)
    mask = np.zeros((80, 72), dtype=np.uint8)
    mask[20:60, 16:56] = 255
    result = client.infer(
        "imagegen",
        [
            prompt(triton_grpc),
            tensor(triton_grpc, "image_pixels", SOURCE),
            tensor(triton_grpc, "mask_pixels", mask),
        ],
        parameters={"steps": 4, "seed": 5},
    )
    assert task_of(result) == "inpaint"
    rest = rest_edit(
        server, png(Image.fromarray(SOURCE)), png(Image.fromarray(mask)), prompt="a castle", steps=4, seed=5
    )
    assert result.as_numpy("images_png").tolist() == rest


def test_stream_sends_progress_previews_then_the_images(server):
    client = client_for(server, triton_grpc)
    answers = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        client.async_stream_infer(
            "imagegen",
            [prompt(triton_grpc, "a ship")],
            parameters={"steps": 4, "seed": 3, "scheduler": "ddim", "partial_images": 2},
        )
    finally:
        client.stop_stream()
    assert [error for _, error in answers] == [None] * len(answers)
    results = [result for result, _ in answers]
    steps = [(r.as_numpy("step")[0], r.as_numpy("partial_images") is not None) for r in results[:-1]]
    assert steps == [(1, False), (2, False), (2, True), (3, False), (4, False), (4, True)]
    assert results[1 + 1].as_numpy("partial_images").shape == (1, 8, 8, 3)  # latent-sized previews
    unary = client.infer(
        "imagegen", [prompt(triton_grpc, "a ship")], parameters={"steps": 4, "seed": 3, "scheduler": "ddim"}
    )
    assert np.array_equal(results[-1].as_numpy("images"), unary.as_numpy("images"))


def post(server, inputs: list[dict], parameters: dict | None = None) -> httpx.Response:
    document = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]}, *inputs]}
    if parameters:
        document["parameters"] = parameters
    return httpx.post(server.rest_url + "/v2/models/imagegen/infer", json=document, timeout=30)


def test_declared_image_size_over_the_limit_is_refused_before_data_is_read(server):
    # 10^10 pixels declared, a handful sent: refused from the declaration alone.
    declared = {
        "name": "image_pixels",
        "datatype": "UINT8",
        "shape": [100_000, 100_000, 3],
        "data": [0, 0, 0],
    }
    response = post(server, [declared])
    assert response.status_code == 400
    assert "image_pixels" in response.json()["error"] and "limit" in response.json()["error"]
    with pytest.raises(InferenceServerException) as raised:
        over = np.zeros((129, 128, 3), dtype=np.uint8)  # one row over MAX_INPUT_PIXELS
        client_for(server, triton_grpc).infer(
            "imagegen", [prompt(triton_grpc), tensor(triton_grpc, "image_pixels", over)]
        )
    assert (
        raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
        and "image_pixels" in raised.value.message()
    )


@pytest.mark.parametrize("name", ["image", "mask"])
def test_png_bomb_header_is_refused_before_decoding(server, name):
    bomb = png_claiming(50_000, 50_000)
    inputs = [tensor(triton_http, name, encoded(bomb))]
    if name == "mask":
        inputs.insert(0, tensor(triton_http, "image_pixels", SOURCE))
    with pytest.raises(InferenceServerException) as raised:
        client_for(server, triton_http).infer("imagegen", [prompt(triton_http), *inputs])
    assert raised.value.status() == "413" and f"{name}:" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client_for(server, triton_grpc).infer(
            "imagegen", [prompt(triton_grpc), tensor(triton_grpc, "image", encoded(bomb))]
        )
    assert (
        raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT) and "pixels" in raised.value.message()
    )
    assert client_for(server, triton_http).is_model_ready("imagegen")


@pytest.mark.parametrize(
    ("inputs", "parameters", "status", "named"),
    [
        ([], {"output_format": "jpeg"}, 400, "output_format"),  # a parameter the model does not honour
        ([], {"steps": "many"}, 400, "parameter 'steps'"),
        ([], {"width": 64}, 400, "height:"),
        ([], {"n": 99}, 400, "n: at most"),
        ([], {"strength": 0.5}, 400, "strength:"),
        ([], {"partial_images": 1}, 400, "partial_images:"),  # previews need ModelStreamInfer
        ([], {"n": 4, "width": 1024, "height": 1024, "steps": 150}, 400, "budget per request"),
        (
            [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not an image"]}],
            None,
            415,
            "image:",
        ),
        (
            [{"name": "mask_pixels", "datatype": "UINT8", "shape": [8, 8], "data": [0] * 64}],
            None,
            400,
            "mask:",
        ),
        (
            [{"name": "image_pixels", "datatype": "UINT8", "shape": [0, 8, 3], "data": []}],
            None,
            400,
            "no pixels",
        ),
        (
            [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]},
                {"name": "image_pixels", "datatype": "UINT8", "shape": [8, 8, 3], "data": [0] * 192},
            ],
            None,
            400,
            "not both",
        ),
    ],
)
def test_bad_requests_get_errors_naming_the_problem(server, inputs, parameters, status, named):
    response = post(server, inputs, parameters)
    assert response.status_code == status, response.text
    assert named in response.json()["error"]


def test_prompt_must_be_utf8(server):
    header = (
        b'{"inputs":[{"name":"prompt","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":6}}]}'
    )
    response = httpx.post(
        server.rest_url + "/v2/models/imagegen/infer",
        content=header + struct.pack("<I", 2) + b"\xff\xfe",
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )
    assert response.status_code == 400 and "UTF-8" in response.json()["error"]
