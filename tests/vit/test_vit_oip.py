"""The ViT server's models over the Open Inference Protocol, driven by Triton's own clients (HTTP and gRPC):
one OIP model per TF Serving model of the config in force (a reload changes them), its loaded versions, and
:predict's limits and answers."""

import base64
import shutil
import time

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2
from tritonclient.utils import InferenceServerException

from services.kit.testing import ServerThread
from services.vit.server import create_service
from services.vit.settings import ViTSettings
from tests.vit import image_bombs

MODEL, PINNED, NUMBERS = "hf-vit", "hf-vit-pinned", "half-plus-two"
MAX_IMAGES = 4
CLIENTS = [triton_http, triton_grpc]


@pytest.fixture(scope="module")
def server(vit_server, tmp_path_factory):
    """Two versions of the exported tiny ViT (copies of the session server's export), served by a config with
    two models over them (every version of one, only version 1 of the other) and a model that takes numbers."""
    base = tmp_path_factory.mktemp("vit-oip")
    exported = vit_server.settings.model_base / MODEL / "1"
    for version in ("1", "2"):
        shutil.copytree(exported, base / MODEL / version)
    halving = tf.Module()
    halving.predict = tf.function(
        lambda x: {"y": 0.5 * x + 2}, input_signature=[tf.TensorSpec([None], tf.float32)]
    )
    tf.saved_model.save(halving, str(base / NUMBERS / "1"), signatures={"serving_default": halving.predict})
    config = base / "models.config"
    config.write_text(
        f"""model_config_list {{
          config {{ name: "{MODEL}" base_path: "{base / MODEL}" model_platform: "tensorflow"
                   model_version_policy {{ all {{}} }} }}
          config {{ name: "{PINNED}" base_path: "{base / MODEL}" model_platform: "tensorflow"
                   model_version_policy {{ specific {{ versions: 1 }} }} }}
          config {{ name: "{NUMBERS}" base_path: "{base / NUMBERS}" model_platform: "tensorflow" }}
        }}"""
    )
    settings = ViTSettings(
        model_config_file=config,
        checkpoint=None,
        poll_interval_s=0,
        threads=1,
        max_request_cost=MAX_IMAGES,
        log_level="warning",
    )
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running
    running.services[0].runner.close()


def client_for(server, module):
    target = server.rest_url.removeprefix("http://") if module is triton_http else server.grpc_target
    return module.InferenceServerClient(target)


def image_input(module, images: list[bytes]):
    tensor = module.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def refused(module, call, status: str, match: str) -> None:
    """The call fails with `status` (HTTP code, or gRPC code name) and a message matching `match`."""
    with pytest.raises(InferenceServerException, match=match) as caught:
        call()
    expected = status if module is triton_http else {"400": "INVALID_ARGUMENT", "404": "NOT_FOUND"}[status]
    assert expected in str(caught.value.status()), caught.value


def metadata(client, module, name: str) -> dict:
    if module is triton_http:
        return client.get_model_metadata(name)
    found = client.get_model_metadata(name, as_json=True)  # protobuf's JSON writes int64 dims as strings
    for tensor in (*found["inputs"], *found["outputs"]):
        tensor["shape"] = [int(dim) for dim in tensor["shape"]]
    return found


def answered_version(result, module) -> str:
    return (result.get_response() if module is triton_http else result.get_response(as_json=True))[
        "model_version"
    ]


def rest_predict(server, model: str, images: list[bytes], version: str | None = None) -> list[dict]:
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    body = {"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}
    response = httpx.post(server.rest_url + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


@pytest.mark.parametrize("module", CLIENTS, ids=["http", "grpc"])
def test_health_and_metadata_describe_each_configured_model(server, module):
    client = client_for(server, module)
    assert client.is_server_live() and client.is_server_ready()
    assert (
        client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1") and client.is_model_ready(PINNED)
    )
    if module is triton_http:
        assert not client.is_model_ready(PINNED, "2")  # a version the pinned model does not load
    assert metadata(client, module, MODEL) == {
        "name": MODEL,
        "versions": ["1", "2"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        # The serving_default signature's outputs, under its names.
        "outputs": [
            {"name": "confidence", "datatype": "FP32", "shape": [-1]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }
    assert metadata(client, module, PINNED)["versions"] == ["1"]


@pytest.mark.parametrize("module", CLIENTS, ids=["http", "grpc"])
def test_classifies_as_the_predict_route_does(server, module, images):
    batch = images[:3]
    result = client_for(server, module).infer(MODEL, [image_input(module, batch)])
    assert answered_version(result, module) == "2"
    expected = rest_predict(server, MODEL, batch)
    labels = [label.decode() for label in result.as_numpy("label")]
    assert labels == [prediction["label"] for prediction in expected]
    np.testing.assert_array_equal(
        result.as_numpy("confidence"),
        np.array([prediction["confidence"] for prediction in expected], np.float32),
    )


@pytest.mark.parametrize("module", CLIENTS, ids=["http", "grpc"])
def test_a_version_is_chosen_by_the_request_else_the_latest(server, module, images):
    client = client_for(server, module)
    for version in ("1", "2"):
        result = client.infer(MODEL, [image_input(module, images[:1])], model_version=version)
        assert answered_version(result, module) == version
        assert (
            result.as_numpy("label")[0].decode()
            == rest_predict(server, MODEL, images[:1], version)[0]["label"]
        )
    assert answered_version(client.infer(MODEL, [image_input(module, images[:1])]), module) == "2"
    assert answered_version(client.infer(PINNED, [image_input(module, images[:1])]), module) == "1"
    refused(
        module,
        lambda: client.infer(PINNED, [image_input(module, images[:1])], model_version="2"),
        "404",
        "'2'",
    )
    refused(
        module,
        lambda: client.infer(MODEL, [image_input(module, images[:1])], model_version="7"),
        "404",
        "'7'",
    )


@pytest.mark.parametrize("module", CLIENTS, ids=["http", "grpc"])
def test_hostile_requests_are_refused_and_the_server_keeps_serving(server, module, images):
    client = client_for(server, module)
    too_many = images[:1] * (MAX_IMAGES + 1)
    refused(
        module, lambda: client.infer(MODEL, [image_input(module, too_many)]), "400", f"limit is {MAX_IMAGES}"
    )
    refused(
        module,
        lambda: client.infer(MODEL, [image_input(module, [b"not an image"])]),
        "400",
        "unknown image format",
    )
    # A header claiming a giant picture is refused from the header, before anything decodes it.
    bomb = image_bombs.claiming("PNG", 30000, 30000)
    refused(module, lambda: client.infer(MODEL, [image_input(module, [bomb])]), "400", "VIT_MAX_IMAGE_SIDE")
    refused(
        module,
        lambda: client.infer(MODEL, [image_input(module, images[:1])], parameters={"top_k": 3}),
        "400",
        "top_k",
    )
    assert client.infer(MODEL, [image_input(module, images[:1])]).as_numpy("label").shape == (1,)


def test_a_declared_batch_over_the_limit_is_refused_before_its_data_is_read(server):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [10**9], "data": ["x"]}]}
    response = httpx.post(f"{server.rest_url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert f"the limit is {MAX_IMAGES}" in response.json()["error"]


def test_a_model_whose_signature_takes_no_images_says_so(server, images):
    client = client_for(server, triton_http)
    assert client.get_model_metadata(NUMBERS)["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1]}]
    refused(
        triton_http,
        lambda: client.infer(NUMBERS, [image_input(triton_http, images[:1])]),
        "400",
        "not one batch",
    )


def model_list(base, *names: str) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        config.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
    return config


def assert_unknown(server, module, name: str, images: list[bytes]) -> None:
    """Metadata and infer for `name` answer 404 (NOT_FOUND over gRPC), naming the model."""
    client = client_for(server, module)
    refused(module, lambda: metadata(client, module, name), "404", f"unknown model '{name}'")
    refused(
        module,
        lambda: client.infer(name, [image_input(module, images[:1])]),
        "404",
        f"unknown model '{name}'",
    )


@pytest.mark.parametrize("reload", ["grpc", "file"])
def test_a_config_reload_adds_and_removes_oip_models(vit_server, tmp_path, images, reload):
    """After a reload that swaps model `before` for `after` (HandleReloadConfigRequest, or the polled config file),
    the OIP answers for `after` and no longer knows `before`, over REST and gRPC, as :predict does."""
    before, after = "vit-before", "vit-after"
    base = tmp_path / "vit"
    shutil.copytree(vit_server.settings.model_base / MODEL / "1", base / "1")
    config_file = tmp_path / "models.config"
    config_file.write_text(text_format.MessageToString(model_list(base, before)))
    settings = ViTSettings(
        model_config_file=config_file,
        model_config_file_poll_wait_seconds=0.2 if reload == "file" else 0,
        allow_reload=True,
        checkpoint=None,
        poll_interval_s=0,
        threads=1,
        log_level="warning",
    )
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        for module in CLIENTS:
            assert client_for(running, module).is_model_ready(before)
            assert_unknown(running, module, after, images)

        if reload == "grpc":
            with grpc.insecure_channel(running.grpc_target) as channel:
                response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                    model_management_pb2.ReloadConfigRequest(config=model_list(base, after)), 60
                )
            assert response.status.error_code == 0, response.status.error_message
        else:
            config_file.write_text(text_format.MessageToString(model_list(base, after)))
            deadline = time.monotonic() + 60
            while httpx.get(f"{running.rest_url}/v2/models/{after}/ready", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "the polled config file never reached the OIP models"
                time.sleep(0.1)

        assert httpx.get(f"{running.rest_url}/v2/models/{after}/ready", timeout=10).status_code == 200
        gone = httpx.get(f"{running.rest_url}/v2/models/{before}", timeout=10)
        assert gone.status_code == 404 and f"unknown model '{before}'" in gone.json()["error"]
        assert httpx.get(f"{running.rest_url}/v2/models/{before}/ready", timeout=10).status_code == 404
        expected = [prediction["label"] for prediction in rest_predict(running, after, images[:2])]
        for module in CLIENTS:
            client = client_for(running, module)
            assert client.is_model_ready(after)
            assert metadata(client, module, after)["name"] == after
            result = client.infer(after, [image_input(module, images[:2])])
            assert [label.decode() for label in result.as_numpy("label")] == expected
            assert_unknown(running, module, before, images)
    running.services[0].runner.close()
