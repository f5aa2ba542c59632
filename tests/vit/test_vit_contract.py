"""Contract tests from TF Serving's REST API documentation (api_rest.md) and its gRPC API, on a
half_plus_three SavedModel built here.

They run against this project's server and, when a `tensorflow_model_server` binary is on PATH, against
the real TF Serving with the same model directory: the expectations are TF Serving's, not ours.
"""

import base64
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from services.kit.testing import ServerThread, free_port
from services.vit.server import create_service
from services.vit.settings import VitSettings

MODEL = "half_plus_three"
LATEST, OLDER = 123, 1  # 123 as in TF Serving's testdata; version 1 is an older half_plus_two


class HalfPlus(tf.Module):
    def __init__(self, offset: float):
        super().__init__()
        self.slope = tf.Variable(0.5)
        self.offset = tf.Variable(offset)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def predict(self, x):
        return {"y": self.slope * x + self.offset}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.string)])
    def tagged(self, x, tag):
        # Several named inputs and outputs; *_bytes outputs come back as {"b64": ...}.
        return {"y": self.slope * x + self.offset, "tag_bytes": tag, "tag_length": tf.strings.length(tag)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.float32)])
    def total(self, a, b):
        # Inputs of different 0-th dimensions: only the columnar format can express them.
        return {"total": tf.reduce_sum(a) + tf.reduce_sum(b)}


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("tfs-models")
    for version, offset in ((OLDER, 2.0), (LATEST, 3.0)):
        module = HalfPlus(offset)
        signatures = {"serving_default": module.predict, "tagged": module.tagged, "total": module.total}
        tf.saved_model.save(module, str(base / MODEL / str(version)), signatures=signatures)
    return base


@dataclass
class Endpoint:
    rest: str
    grpc: str


def _serve_with_tensorflow_model_server(binary: str, model_base: Path, tmp_path: Path):
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{model_base / MODEL}" '
        'model_platform: "tensorflow" model_version_policy { all {} } } }'
    )
    rest_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [binary, f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_config_file={config}"]
    )
    endpoint = Endpoint(f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}")
    for _ in range(120):
        try:
            states = requests.get(f"{endpoint.rest}/v1/models/{MODEL}", timeout=1).json()
            if len([s for s in states.get("model_version_status", []) if s["state"] == "AVAILABLE"]) == 2:
                return process, endpoint
        except requests.RequestException:
            pass
        if process.poll() is not None:
            break
        subprocess.run(["sleep", "0.5"])
    process.terminate()
    pytest.fail("tensorflow_model_server did not load both versions")


@pytest.fixture(scope="module", params=["python", "tensorflow_model_server"])
def server(request, model_base, tmp_path_factory):
    if request.param == "python":
        settings = VitSettings(model_base=model_base, model_name=MODEL, poll_interval_s=0, checkpoint=None)
        with ServerThread(lambda: [create_service(settings)], settings) as thread:
            yield Endpoint(thread.rest_url, thread.grpc_target)
        return
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("no tensorflow_model_server binary on PATH (it ships as the tensorflow/serving image)")
    process, endpoint = _serve_with_tensorflow_model_server(
        binary, model_base, tmp_path_factory.mktemp("tfs")
    )
    yield endpoint
    process.terminate()
    process.wait(timeout=30)


def post(server: Endpoint, path: str, body) -> requests.Response:
    return requests.post(f"{server.rest}{path}", json=body, timeout=30)


def available(version: int) -> dict:
    return {
        "version": str(version),
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }


# -- REST, following api_rest.md ----------------------------------------------------------------


def test_model_status_lists_every_version(server):
    response = requests.get(f"{server.rest}/v1/models/{MODEL}", timeout=10)
    assert response.status_code == 200
    statuses = response.json()["model_version_status"]
    assert sorted(statuses, key=lambda s: int(s["version"])) == [available(OLDER), available(LATEST)]


def test_version_status(server):
    response = requests.get(f"{server.rest}/v1/models/{MODEL}/versions/{OLDER}", timeout=10)
    assert response.json() == {"model_version_status": [available(OLDER)]}


def test_predict_row_format_documented_example(server):
    response = post(server, f"/v1/models/{MODEL}:predict", {"instances": [1.0, 2.0, 5.0]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"predictions": [3.5, 4.0, 5.5]}


def test_predict_on_a_specific_version(server):
    response = post(server, f"/v1/models/{MODEL}/versions/{OLDER}:predict", {"instances": [1.0, 2.0, 5.0]})
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_floats_are_written_in_their_shortest_form(server):
    # float32 3.1 is 3.0999999046325684 as a double; TF Serving writes 3.1.
    response = post(server, f"/v1/models/{MODEL}:predict", {"instances": [0.2]})
    assert response.text.replace(" ", "").replace("\n", "") == '{"predictions":[3.1]}'


def test_predict_columnar_format(server):
    assert post(server, f"/v1/models/{MODEL}:predict", {"inputs": [1.0, 2.0]}).json() == {
        "outputs": [3.5, 4.0]
    }
    assert post(server, f"/v1/models/{MODEL}:predict", {"inputs": {"x": [1.0, 2.0]}}).json() == {
        "outputs": [3.5, 4.0]
    }


def test_row_format_with_named_inputs_and_binary_values(server):
    body = {
        "signature_name": "tagged",
        "instances": [
            {"x": 1.0, "tag": "foo"},
            {"x": 2.0, "tag": {"b64": base64.b64encode(b"\x00\xffbar").decode()}},
        ],
    }
    response = post(server, f"/v1/models/{MODEL}:predict", body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "predictions": [
            {"y": 3.5, "tag_bytes": {"b64": base64.b64encode(b"foo").decode()}, "tag_length": 3},
            {"y": 4.0, "tag_bytes": {"b64": base64.b64encode(b"\x00\xffbar").decode()}, "tag_length": 5},
        ]
    }


def test_columnar_format_with_named_inputs(server):
    body = {"signature_name": "tagged", "inputs": {"x": [1.0, 5.0], "tag": ["a", "bcd"]}}
    assert post(server, f"/v1/models/{MODEL}:predict", body).json() == {
        "outputs": {"y": [3.5, 5.5], "tag_bytes": [{"b64": "YQ=="}, {"b64": "YmNk"}], "tag_length": [1, 3]}
    }
    # Different 0-th dimensions per input: columnar only.
    body = {"signature_name": "total", "inputs": {"a": [1.0, 2.0, 3.0], "b": [10.0]}}
    assert post(server, f"/v1/models/{MODEL}:predict", body).json() == {"outputs": 16.0}


def test_metadata(server):
    for path, version in (
        (f"/v1/models/{MODEL}/metadata", LATEST),
        (f"/v1/models/{MODEL}/versions/1/metadata", 1),
    ):
        doc = requests.get(f"{server.rest}{path}", timeout=10).json()
        assert doc["model_spec"] == {"name": MODEL, "signature_name": "", "version": str(version)}
        signatures = doc["metadata"]["signature_def"]["signature_def"]
        assert {"serving_default", "tagged", "total"} <= set(signatures)
        default = signatures["serving_default"]
        assert default["method_name"] == "tensorflow/serving/predict"
        assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
        assert default["inputs"]["x"]["tensor_shape"] == {
            "dim": [{"size": "-1", "name": ""}],
            "unknown_rank": False,
        }
        assert default["outputs"]["y"]["dtype"] == "DT_FLOAT"
        assert signatures["tagged"]["outputs"]["tag_bytes"]["dtype"] == "DT_STRING"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (
            "/v1/models/half:predict",
            {"instances": [1.0, 5.0]},
            404,
            "Servable not found for request: Latest(half)",
        ),
        (
            f"/v1/models/{MODEL}/versions/7:predict",
            {"instances": [1.0]},
            404,
            f"Servable not found for request: Specific({MODEL}, 7)",
        ),
        (
            f"/v1/models/{MODEL}:predict",
            {"signature_name": "nope", "instances": [1.0]},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (
            f"/v1/models/{MODEL}:predict",
            {"instances": [1.0], "inputs": [1.0]},
            400,
            "expecting only one of 'inputs' or 'instances' keys to exist",
        ),
        (
            f"/v1/models/{MODEL}:predict",
            {"signature": "serving_default"},
            400,
            "Missing 'inputs' or 'instances' key",
        ),
        (f"/v1/models/{MODEL}:predict", {"instances": ["one"]}, 400, "is not of expected type: float"),
        (
            f"/v1/models/{MODEL}:predict",
            {"instances": [[1.0], [2.0, 3.0]]},
            400,
            "Expecting tensor size: 1 but got: 2",
        ),
        (
            f"/v1/models/{MODEL}:predict",
            {"signature_name": "tagged", "instances": [{"x": 1.0}]},
            400,
            "must only have keys: tag,x",
        ),
        (
            f"/v1/models/{MODEL}:predict",
            {"signature_name": "tagged", "instances": [{"x": 1.0, "tag": {"b64": "QQ==", "x": 1}}]},
            400,
            "not formatted correctly for base64 data",
        ),
        (
            f"/v1/models/{MODEL}:predict",
            {"signature_name": "tagged", "inputs": {"x": [1.0], "tag": [{"b64": "#"}]}},
            400,
            "Unable to base64 decode",
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "unknown-signature",
        "instances-and-inputs",
        "no-tensors",
        "wrong-type",
        "ragged",
        "missing-input",
        "b64-extra-key",
        "bad-base64",
    ],
)
def test_errors_have_tf_serving_shape_and_status(server, path, body, status, message):
    response = post(server, path, body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_non_json_body_and_unknown_model_status(server):
    response = requests.post(f"{server.rest}/v1/models/{MODEL}:predict", data=b"{not json", timeout=10)
    assert response.status_code == 400 and response.json()["error"].startswith("JSON Parse error")
    response = requests.get(f"{server.rest}/v1/models/nope", timeout=10)
    assert response.status_code == 404 and "nope" in response.json()["error"]
    # The server kept serving through all of it.
    assert post(server, f"/v1/models/{MODEL}:predict", {"instances": [1.0]}).json() == {"predictions": [3.5]}


# -- gRPC, with the tensorflow-serving-api stubs --------------------------------------------------


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc) as channel:
        yield channel


def test_grpc_predict(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], dtype=tf.float32))
    response = stub.Predict(request, 10.0)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [3.5, 4.0, 5.5]
    # Values come in the typed field, as TF Serving sends them: clients read it directly.
    assert list(response.outputs["y"].float_val) == [3.5, 4.0, 5.5]
    assert response.model_spec.name == MODEL and response.model_spec.version.value == LATEST
    assert response.model_spec.signature_name == "serving_default"

    request.model_spec.version.value = OLDER
    assert tf.make_ndarray(stub.Predict(request, 10.0).outputs["y"]).tolist() == [2.5, 3.0, 4.5]


def test_grpc_predict_named_inputs_and_output_filter(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest(output_filter=["tag_length"])
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "tagged"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
    request.inputs["tag"].CopyFrom(tf.make_tensor_proto([b"ab", b"\xff\x00\x01"]))
    response = stub.Predict(request, 10.0)
    assert set(response.outputs) == {"tag_length"}
    assert list(response.outputs["tag_length"].int_val) == [2, 3]
    assert response.outputs["tag_length"].tensor_shape.dim[0].size == 2


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda r: setattr(r.model_spec, "name", "half"), grpc.StatusCode.NOT_FOUND),
        (lambda r: r.model_spec.version.__setattr__("value", 7), grpc.StatusCode.NOT_FOUND),
        (lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION),
        (lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(["a"])), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.inputs["z"].CopyFrom(tf.make_tensor_proto([1.0])), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.output_filter.append("nope"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["unknown-model", "unknown-version", "unknown-signature", "wrong-dtype", "extra-input", "bad-filter"],
)
def test_grpc_errors_have_tf_serving_codes(channel, change, code):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], dtype=tf.float32))
    change(request)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, 10.0)
    assert caught.value.code() == code
    if code == grpc.StatusCode.NOT_FOUND:
        assert caught.value.details().startswith("Servable not found for request:")


def test_grpc_metadata_and_status(channel):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, 10.0)
    assert response.model_spec.version.value == LATEST
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert signatures.signature_def["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, 10.0)
    assert {(s.version, s.state) for s in status.model_version_status} == {
        (LATEST, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (OLDER, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    }
    status_request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as caught:
        model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, 10.0)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
