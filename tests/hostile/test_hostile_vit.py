"""Hostile Predict requests against the real TF Serving-compatible ViT server (the platform's child process).

Each attack must get INVALID_ARGUMENT / 400 with TF Serving's `{"error": "..."}` naming the problem and its
numbers, quickly, without raising the server's peak memory by much, and leave it answering normal requests.
Before the limits, a ~100-byte gRPC request whose string tensor declared 50,000,000 elements took 44 s and
14 GB; the attacks here are scaled so that, with a protection removed, they fail on memory (a few GB at
most) rather than exhaust the machine.
"""

import base64
import json
import threading
import time

import grpc
import httpx
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from services.vit.settings import ViTSettings
from tests.vit import image_bombs

MODEL = "hf-vit"
PREDICT = f"/v1/models/{MODEL}:predict"
MEMORY_BUDGET_MB = 300
SECONDS_BUDGET = 10
SETTINGS = ViTSettings()
MAX_ELEMENTS = SETTINGS.max_tensor_elements
IMAGE_SIZE = 224  # the tiny checkpoint's: pixel_values is [batch, 3, 224, 224]


# -- clients ----------------------------------------------------------------------------------------


def grpc_predict(platform, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    with grpc.insecure_channel(
        platform.vit_grpc_target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)


def grpc_request(signature: str = "") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    return request


def string_input(request: predict_pb2.PredictRequest, shape: list[int], values: list[bytes]) -> None:
    tensor = request.inputs["string_input"]
    tensor.dtype = types_pb2.DT_STRING
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.string_val.extend(values)


def measured(platform, send):
    """(result or raised exception, seconds, peak memory growth of the server processes in MB)."""
    baseline = platform.reset_peak_memory()
    started = time.perf_counter()
    try:
        result = send()
    except grpc.RpcError as exc:
        result = exc
    return result, time.perf_counter() - started, platform.peak_growth_mb(baseline)


def grpc_attack(platform, request: predict_pb2.PredictRequest) -> tuple[grpc.RpcError, float]:
    error, seconds, growth = measured(platform, lambda: grpc_predict(platform, request))
    assert isinstance(error, grpc.RpcError), "the attack was answered OK"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert seconds < SECONDS_BUDGET and growth < MEMORY_BUDGET_MB, (seconds, growth, error.details())
    assert_still_predicts(platform)
    return error, seconds


def rest_attack(platform, body: bytes, content_type: str = "application/json") -> str:
    def send():
        return httpx.post(
            platform.vit_rest_url + PREDICT, content=body, headers={"content-type": content_type}, timeout=120
        )

    response, seconds, growth = measured(platform, send)
    assert response.status_code == 400, response.text[:500]
    error = response.json()
    assert list(error) == ["error"] and isinstance(error["error"], str), error  # TF Serving's error shape
    assert seconds < SECONDS_BUDGET and growth < MEMORY_BUDGET_MB, (seconds, growth, error)
    assert_still_predicts(platform)
    return error["error"]


def assert_still_predicts(platform) -> None:
    image = image_bombs.tiny("PNG")
    response = httpx.post(
        platform.vit_rest_url + PREDICT,
        json={"instances": [base64.urlsafe_b64encode(image).decode()]},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    request = grpc_request()
    string_input(request, [1], [image])
    assert len(grpc_predict(platform, request).outputs["label"].string_val) == 1


# -- declared shapes over gRPC ----------------------------------------------------------------------


def test_grpc_string_tensor_declaring_millions_of_elements(platform):
    # Five million 100-byte strings from one value: 2.3 GB and 8 s before the element cap.
    request = grpc_request()
    string_input(request, [5_000_000], [b"x" * 100])
    error, seconds = grpc_attack(platform, request)
    assert "shape [5000000] holds 5000000 elements" in error.details()
    assert f"at most {MAX_ELEMENTS} (VIT_MAX_TENSOR_ELEMENTS)" in error.details()
    assert seconds < 2


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([2**62, 3, IMAGE_SIZE, IMAGE_SIZE], f"holds {2**62 * 3 * IMAGE_SIZE**2} elements"),  # > int64
        ([-1, 3, IMAGE_SIZE, IMAGE_SIZE], "negative dimension"),
        ([1] * 300, "rank 300 exceeds 254"),
    ],
    ids=["product-overflows-int64", "negative", "rank-300"],
)
def test_grpc_impossible_shapes(platform, shape, message):
    request = grpc_request("pixel_values")
    tensor = request.inputs["pixel_values"]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.float_val.append(0.5)
    error, _ = grpc_attack(platform, request)
    assert message in error.details()


def test_grpc_fill_form_is_charged_its_filled_bytes(platform):
    # One 4 MB value filling 64 rows (TensorFlow repeats the last value): 256 MB of strings once filled,
    # over half a gigabyte at the peak without the byte budget.
    request = grpc_request()
    string_input(request, [64], [b"y" * 4_000_000])
    error, _ = grpc_attack(platform, request)
    assert "string values reach 256000000 bytes" in error.details()
    assert "(VIT_MAX_STRING_BYTES)" in error.details()


def test_grpc_rows_are_bounded_before_each_string_is_examined(platform):
    # Three million ten-byte strings from one value: under the element and byte budgets, but 13 s of
    # per-string work (header checks) before the batcher would refuse the row count.
    request = grpc_request()
    string_input(request, [3_000_000], [b"y" * 10])
    error, seconds = grpc_attack(platform, request)
    assert f"holds 3000000 rows; a request may hold at most {SETTINGS.max_request_cost:g}" in error.details()
    assert seconds < 3


def test_grpc_values_must_fit_the_shape(platform):
    request = grpc_request()
    string_input(request, [2], [image_bombs.tiny("PNG")] * 5)
    error, _ = grpc_attack(platform, request)
    assert "5 values for shape [2], which holds 2" in error.details()

    request = grpc_request("pixel_values")
    tensor = request.inputs["pixel_values"]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in (1, 3, IMAGE_SIZE, IMAGE_SIZE):
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = bytes(12)
    error, _ = grpc_attack(platform, request)
    assert f"tensor_content holds 12 bytes; shape [1, 3, {IMAGE_SIZE}, {IMAGE_SIZE}]" in error.details()
    assert f"needs {3 * IMAGE_SIZE * IMAGE_SIZE * 4}" in error.details()


# -- REST bodies ------------------------------------------------------------------------------------


# The kit's middleware checks JSON-typed bodies; the predict route parses any body (TF Serving does, and
# `curl -d` sends a form type), so it checks them all again.
CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded"]
ROUTE_CHECKED = "application/x-www-form-urlencoded"


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_rest_200k_deep_json_is_400_not_500(platform, content_type):
    message = rest_attack(platform, b'{"instances": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", content_type)
    assert f"deeper than {SETTINGS.max_json_depth} levels" in message
    if content_type == ROUTE_CHECKED:
        assert "(VIT_MAX_JSON_DEPTH)" in message


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_rest_huge_json_array_is_refused_before_parsing(platform, content_type):
    # Five million one-element lists in 30 MB: parsed, ~0.5 GB of Python lists and floats.
    body = b'{"signature_name": "pixel_values", "inputs": [' + b",".join([b"[0.5]"] * 5_000_000) + b"]}"
    assert len(body) < SETTINGS.max_body_bytes
    message = rest_attack(platform, body, content_type)
    assert f"more than {SETTINGS.max_json_elements}" in message
    if content_type == ROUTE_CHECKED:
        assert "(VIT_MAX_JSON_ELEMENTS)" in message


def test_rest_half_a_million_instances_are_refused_before_conversion(platform):
    # Under the JSON element bound (a string and a comma each), but each instance becomes an array of its
    # own before they are stacked.
    rows = SETTINGS.max_json_elements // 2 - 1000
    message = rest_attack(platform, b'{"instances": [' + b",".join([b'""'] * rows) + b"]}")
    assert f"'instances' holds {rows} rows; a request may hold at most {SETTINGS.max_request_cost:g}" in message


def test_rest_declared_shape_is_charged_before_conversion(platform):
    # The shape is read along the first elements: [4096, 3, 224, 224] declared by a few thousand values.
    row = [[[0.5] * IMAGE_SIZE] * IMAGE_SIZE] * 3
    inputs = [row] + [0] * 4095
    message = rest_attack(platform, json.dumps({"signature_name": "pixel_values", "inputs": inputs}).encode())
    assert f"shape [4096, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] holds {4096 * 3 * IMAGE_SIZE**2} elements" in message


def test_event_loop_answers_while_a_large_body_converts(platform):
    # Six pixel_values images as JSON: ~900,000 numbers, seconds of parsing and conversion. A form content
    # type (curl -d's) keeps the kit's own JSON scan out of the measurement: this is about the route's work.
    image = [[[0.25] * IMAGE_SIZE] * IMAGE_SIZE] * 3
    body = json.dumps({"signature_name": "pixel_values", "inputs": [image] * 6}).encode()
    result = {}

    def post():
        result["response"] = httpx.post(
            platform.vit_rest_url + PREDICT,
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded"},
            timeout=120,
        )

    poster = threading.Thread(target=post)
    poster.start()
    slowest, polls = 0.0, 0
    with httpx.Client(base_url=platform.vit_rest_url, timeout=30) as client:
        while poster.is_alive():
            started = time.perf_counter()
            assert client.get(f"/v1/models/{MODEL}").status_code == 200
            slowest, polls = max(slowest, time.perf_counter() - started), polls + 1
            time.sleep(0.02)
    poster.join()
    assert result["response"].status_code == 200, result["response"].text[:300]
    assert len(result["response"].json()["outputs"]) == 6
    assert polls > 10 and slowest < 0.5, (polls, slowest)


# -- images -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", image_bombs.FORMATS)
def test_header_claiming_60000x60000_is_refused_before_queuing(platform, fmt):
    data = image_bombs.claiming(fmt, 60000, 60000)
    assert len(data) < 1000
    message = rest_attack(platform, json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode())
    assert f"string_input[0]: {fmt} image of 60000x60000 pixels" in message
    assert "(VIT_MAX_IMAGE_SIDE)" in message

    request = grpc_request()
    string_input(request, [2], [image_bombs.tiny("PNG"), data])
    error, _ = grpc_attack(platform, request)
    assert f"string_input[1]: {fmt} image of 60000x60000 pixels" in error.details()


def test_decompression_bomb_is_refused_from_its_header(platform):
    # 140 KB of PNG that decodes to 430 MB of RGB, and four times that as floats.
    data = image_bombs.zeros("PNG", 12000, 12000)
    message = rest_attack(platform, json.dumps({"instances": [base64.urlsafe_b64encode(data).decode()]}).encode())
    assert "PNG image of 12000x12000 pixels" in message


def test_gif_frame_larger_than_its_screen_is_refused(platform):
    # 48 KB: an 8x8 logical screen, an 8x8 first frame, then an 8000x8000 one (1.75 GB at the peak).
    data = image_bombs.gif_frames((8, 8), [(8, 8), (8000, 8000)])
    message = rest_attack(platform, json.dumps({"instances": [base64.urlsafe_b64encode(data).decode()]}).encode())
    assert "GIF image of 8x8 pixels whose frames hold 64000064 pixels, 8000 on their longest side" in message


@pytest.mark.parametrize(
    ("cut", "message"),
    [(20, "truncated image header"), (60, "Invalid PNG data, size 60")],
    ids=["inside-the-header", "inside-the-pixels"],
)
def test_truncated_image(platform, cut, message):
    data = image_bombs.zeros("PNG", 64, 64)[:cut]
    error = rest_attack(platform, json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode())
    assert message in error
