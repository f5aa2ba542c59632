"""Hostile input on the new paths (Classify/Regress examples, version labels, config reloads) against the
session's tiny-ViT server: each is refused quickly with INVALID_ARGUMENT / 400 naming the bound, before the
work it would cause, and the server keeps answering."""

import base64
import io
import time

import grpc
import pytest
import requests
from PIL import Image
from tensorflow_serving.apis import (
    classification_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

MODEL = "hf-vit"
SECONDS_BUDGET = 5


def _stub(server, service=prediction_service_pb2_grpc.PredictionServiceStub):
    channel = grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 64 << 20)])
    return channel, service(channel)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def _assert_still_classifies(server, image: bytes) -> None:
    body = {
        "signature_name": "classify",
        "examples": [{"image/encoded": {"b64": base64.b64encode(image).decode()}}],
    }
    response = requests.post(f"{server.rest_url}/v1/models/{MODEL}:classify", json=body, timeout=60)
    assert response.status_code == 200, response.text
    (classes,) = response.json()["results"]
    assert len(classes) == 5 and all(isinstance(label, str) and 0 <= score <= 1 for label, score in classes)


def _grpc_refused(server, call, request, code=grpc.StatusCode.INVALID_ARGUMENT) -> str:
    channel, stub = _stub(server)
    started = time.perf_counter()
    with channel, pytest.raises(grpc.RpcError) as caught:
        getattr(stub, call)(request, 60)
    assert caught.value.code() == code, caught.value.details()
    assert time.perf_counter() - started < SECONDS_BUDGET
    return caught.value.details()


def _classify_request() -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "classify"
    return request


def test_a_million_examples_are_refused_by_count(vit_server, images):
    request = _classify_request()
    examples = request.input.example_list.examples
    for _ in range(1_000_000):
        examples.add()
    assert "holds 1000000 rows" in _grpc_refused(vit_server, "Classify", request)
    body = b'{"signature_name": "classify", "examples": [' + b",".join([b"{}"] * 200_000) + b"]}"
    response = requests.post(f"{vit_server.rest_url}/v1/models/{MODEL}:classify", data=body, timeout=60)
    assert response.status_code == 400 and "'examples' holds 200000 rows" in response.json()["error"]
    _assert_still_classifies(vit_server, images[0])


def test_a_context_copied_into_every_example_counts_every_copy(vit_server, images):
    # 1 MB of context sent once becomes 64 MB once serialized in front of each of 64 examples.
    request = _classify_request()
    context = request.input.example_list_with_context.context
    context.features.feature["padding"].bytes_list.value.append(b"\0" * (1 << 20))
    for _ in range(64):
        request.input.example_list_with_context.examples.add()
    assert "VIT_MAX_STRING_BYTES" in _grpc_refused(vit_server, "Classify", request)
    _assert_still_classifies(vit_server, images[1])


def test_an_image_bomb_in_an_example_is_refused_by_its_header(vit_server, images):
    request = _classify_request()
    feature = request.input.example_list.examples.add().features.feature["image/encoded"]
    feature.bytes_list.value.append(_png(7100, 7100))
    assert "7100x7100 pixels" in _grpc_refused(vit_server, "Classify", request)
    body = {
        "signature_name": "classify",
        "examples": [{"image/encoded": {"b64": base64.b64encode(_png(9000, 10)).decode()}}],
    }
    response = requests.post(f"{vit_server.rest_url}/v1/models/{MODEL}:classify", json=body, timeout=60)
    assert response.status_code == 400 and "9000x10 pixels" in response.json()["error"]
    _assert_still_classifies(vit_server, images[2])


def test_a_huge_label_is_refused_and_not_echoed_whole(vit_server, images):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.version_label = "x" * 1_000_000
    details = _grpc_refused(vit_server, "Predict", request)
    assert details.startswith("Unrecognized servable version label: xxx") and len(details) < 300
    response = requests.post(
        f"{vit_server.rest_url}/v1/models/{MODEL}/labels/{'y' * 4000}:predict",
        json={"instances": ["x"]},
        timeout=10,
    )
    assert response.status_code == 400 and len(response.json()["error"]) < 300
    _assert_still_classifies(vit_server, images[3])


def test_hostile_reload_configs_are_refused_and_the_model_keeps_serving(vit_server, images):
    channel, stub = _stub(vit_server, model_service_pb2_grpc.ModelServiceStub)
    many = model_management_pb2.ReloadConfigRequest()
    for index in range(10_000):
        many.config.model_config_list.config.add(
            name=f"m{index}", base_path=f"/m{index}", model_platform="tensorflow"
        )
    custom = model_management_pb2.ReloadConfigRequest()
    custom.config.custom_model_config.Pack(many.config)
    with channel:
        for request, message in (
            (many, "lists 10000 models; this server loads at most 64 (VIT_MAX_MODELS)"),
            (custom, "Only ModelConfigList is currently supported"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub.HandleReloadConfigRequest(request, 30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in caught.value.details()
    _assert_still_classifies(vit_server, images[4])
