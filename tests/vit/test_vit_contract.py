"""Contract tests from TF Serving's REST API documentation (api_rest.md) and its gRPC API, on a
half_plus_three SavedModel built here, served from one model config file (three models over the same
versions: `all`, default and `specific` version policies, version labels).

They run against this project's server and, when a `tensorflow_model_server` binary is on PATH, against
the real TF Serving with the same model directory and the same config file: the expectations are TF
Serving's, not ours. Messages asserted here are TF Serving's (server_core.cc, classifier.cc, regressor.cc,
json_tensor.cc, util.cc).
"""

import base64
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from services.kit.testing import ServerThread, free_port
from services.vit.examples import Method, set_method_names
from services.vit.server import create_service
from services.vit.settings import ViTSettings

MODEL = "half_plus_three"
LATEST, OLDER = 123, 1  # 123 as in TF Serving's testdata; version 1 is an older half_plus_two
# The same versions under TF Serving's default policy (the latest only) and under `specific { versions: 1 }`.
LATEST_ONLY, PINNED = "half_plus_three_latest", "half_plus_three_pinned"
EXAMPLE_FEATURES = {"x": tf.io.FixedLenFeature([], tf.float32)}


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

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        # Serialized tf.Examples with a float feature "x": one class per example, scored y.
        y = self.slope * tf.io.parse_example(inputs, EXAMPLE_FEATURES)["x"] + self.offset
        return {"classes": tf.fill([tf.size(y), 1], "y"), "scores": tf.expand_dims(y, 1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self.slope * tf.io.parse_example(inputs, EXAMPLE_FEATURES)["x"] + self.offset}


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("tfs-models")
    for version, offset in ((OLDER, 2.0), (LATEST, 3.0)):
        module = HalfPlus(offset)
        signatures = {
            "serving_default": module.predict,
            "tagged": module.tagged,
            "total": module.total,
            "classify_x_to_y": module.classify,
            "regress_x_to_y": module.regress,
        }
        tf.saved_model.save(module, str(base / MODEL / str(version)), signatures=signatures)
        set_method_names(
            base / MODEL / str(version), {"classify_x_to_y": Method.CLASSIFY, "regress_x_to_y": Method.REGRESS}
        )
    return base


def model_config(model_base: Path, stable: int = OLDER) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(
        f"""
        model_config_list {{
          config {{
            name: "{MODEL}" base_path: "{model_base / MODEL}" model_platform: "tensorflow"
            model_version_policy {{ all {{}} }}
            version_labels {{ key: "stable" value: {stable} }}
            version_labels {{ key: "canary" value: {LATEST} }}
          }}
          config {{ name: "{LATEST_ONLY}" base_path: "{model_base / MODEL}" model_platform: "tensorflow" }}
          config {{
            name: "{PINNED}" base_path: "{model_base / MODEL}" model_platform: "tensorflow"
            model_version_policy {{ specific {{ versions: {OLDER} }} }}
          }}
        }}
        """,
        model_server_config_pb2.ModelServerConfig(),
    )


@pytest.fixture(scope="module")
def config_file(model_base, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tfs-config") / "models.config"
    path.write_text(text_format.MessageToString(model_config(model_base)))
    return path


@dataclass
class Endpoint:
    rest: str
    grpc: str


def _serve_with_tensorflow_model_server(binary: str, config_file: Path):
    rest_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--model_config_file={config_file}",
            # Labels in the first config name versions that are not loaded yet.
            "--allow_version_labels_for_unavailable_models",
        ]
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
def server(request, config_file):
    if request.param == "python":
        settings = ViTSettings(
            model_config_file=config_file,
            allow_version_labels_for_unavailable_models=True,
            allow_reload=True,
            poll_interval_s=0,
            checkpoint=None,
        )
        with ServerThread(lambda: [create_service(settings)], settings) as thread:
            yield Endpoint(thread.rest_url, thread.grpc_target)
        return
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("no tensorflow_model_server binary on PATH (it ships as the tensorflow/serving image)")
    process, endpoint = _serve_with_tensorflow_model_server(binary, config_file)
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
            "keys must be equal to: tag,x",
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


# TF Serving's exact words (tensorflow_serving/util/json_tensor.cc, 2.20.0 and master):
#   ParseJson:           "JSON Parse error: ", rapidjson::GetParseError_En(doc->GetParseError()),
#                        " at offset: ", doc->GetErrorOffset()
#   FillPredictRequestFromJson:  FormatError(doc, "Not formatted correctly expecting only", " one of '",
#                        kPredictRequestInputsKey, "' or '", kPredictRequestInstancesKey, "' keys to exist ")
#   FormatError:         "JSON Value: ", JsonValueToDebugString(val), " ", args...
#   FillTensorMapFromInstancesList:  "Failed to process element: ", tensor_count, " key: ", name,
#                        " of 'instances' list. Error: ", status.ToString()   (absl: "INVALID_ARGUMENT: <message>")
#   JsonDecodeBase64Object:  errors::InvalidArgument("Unable to base64 decode")
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "JSON Parse error: Missing a name for object member. at offset: 1"),
        (b'{"instances": [1.0,', "JSON Parse error: Invalid value. at offset: 19"),
        (
            b'{"instances": [1.0], "inputs" [1.0]}',
            "JSON Parse error: Missing a colon after a name of object member. at offset: 30",
        ),
        (b"   ", "JSON Parse error: The document is empty. at offset: 3"),
        (
            b'{"signature_name": "tagged", "instances": [{"x": 1.0, "tag": {"b64": "#"}}]}',
            "Failed to process element: 0 key: tag of 'instances' list. Error: INVALID_ARGUMENT: "
            "Unable to base64 decode",
        ),
        (
            b'{"instances": [1.0, "one"]}',
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
            'JSON Value: "one" Type: String is not of expected type: float',
        ),
    ],
    ids=["no-member-name", "no-value", "no-colon", "whitespace", "row-base64", "row-type"],
)
def test_error_messages_are_tf_servings_to_the_letter(server, body, message):
    response = requests.post(f"{server.rest}/v1/models/{MODEL}:predict", data=body, timeout=10)
    assert response.status_code == 400 and response.json() == {"error": message}


def test_both_inputs_and_instances_message_ends_as_tf_servings(server):
    error = post(server, f"/v1/models/{MODEL}:predict", {"instances": [1.0], "inputs": [1.0]}).json()["error"]
    # The document is rendered between "JSON Value: " and the message; the message keeps its trailing space.
    assert re.fullmatch(
        r"JSON Value: .+ Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        error,
        re.DOTALL,
    ), error


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


# -- several models, version policies and labels (one config file) ---------------------------------------


def version_states(server: Endpoint, model: str) -> dict[int, str]:
    response = requests.get(f"{server.rest}/v1/models/{model}", timeout=10)
    return {int(s["version"]): s["state"] for s in response.json()["model_version_status"]}


def test_each_model_of_the_config_follows_its_version_policy(server):
    assert version_states(server, MODEL) == {LATEST: "AVAILABLE", OLDER: "AVAILABLE"}  # all {}
    assert version_states(server, LATEST_ONLY) == {LATEST: "AVAILABLE"}  # the default: latest only
    assert version_states(server, PINNED) == {OLDER: "AVAILABLE"}  # specific { versions: 1 }
    assert post(server, f"/v1/models/{LATEST_ONLY}:predict", {"instances": [1.0]}).json() == {
        "predictions": [3.5]
    }
    assert post(server, f"/v1/models/{PINNED}:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}
    response = post(server, f"/v1/models/{LATEST_ONLY}/versions/{OLDER}:predict", {"instances": [1.0]})
    assert response.status_code == 404
    assert response.json() == {"error": f"Servable not found for request: Specific({LATEST_ONLY}, {OLDER})"}


def test_labels_name_a_version_in_every_rest_endpoint(server):
    labelled = f"/v1/models/{MODEL}/labels"
    assert post(server, f"{labelled}/stable:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}
    assert post(server, f"{labelled}/canary:predict", {"instances": [1.0]}).json() == {"predictions": [3.5]}
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]}
    assert post(server, f"{labelled}/stable:classify", body).json() == {"results": [[["y", 2.5]]]}
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}
    assert post(server, f"{labelled}/canary:regress", body).json() == {"results": [3.5]}
    metadata = requests.get(f"{server.rest}{labelled}/stable/metadata", timeout=10).json()
    assert metadata["model_spec"]["version"] == str(OLDER)
    # GetModelStatus does not read the label: every version's status comes back.
    status = requests.get(f"{server.rest}{labelled}/stable", timeout=10).json()
    assert {s["version"] for s in status["model_version_status"]} == {str(OLDER), str(LATEST)}


@pytest.mark.parametrize("path", [f"/v1/models/{MODEL}/labels/nope", f"/v1/models/{LATEST_ONLY}/labels/stable"])
def test_an_unknown_label_is_invalid_argument(server, path):
    label = path.rsplit("/", 1)[1]
    for suffix, body in ((":predict", {"instances": [1.0]}), (":regress", {"examples": [{"x": 1.0}]})):
        response = post(server, path + suffix, body)
        assert response.status_code == 400
        assert response.json() == {"error": f"Unrecognized servable version label: {label}"}
    response = requests.get(f"{server.rest}{path}/metadata", timeout=10)
    assert response.status_code == 400 and "Unrecognized servable version label" in response.json()["error"]


def test_grpc_version_label(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.version_label = "stable"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], dtype=tf.float32))
    response = stub.Predict(request, 10.0)
    assert list(response.outputs["y"].float_val) == [2.5]
    assert response.model_spec.version.value == OLDER

    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = MODEL
    metadata.model_spec.version_label = "canary"
    assert stub.GetModelMetadata(metadata, 10.0).model_spec.version.value == LATEST

    request.model_spec.version_label = "nope"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, 10.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "Unrecognized servable version label: nope"


# -- Classify and Regress -----------------------------------------------------------------------------


def test_rest_classify_and_regress(server):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert post(server, f"/v1/models/{MODEL}:classify", body).json() == {"results": [[["y", 3.5]], [["y", 4.0]]]}
    # Context features go to every example; an example's own feature wins over the context's.
    body = {"signature_name": "regress_x_to_y", "context": {"x": 5.0}, "examples": [{}, {"x": [1.0]}]}
    response = post(server, f"/v1/models/{MODEL}:regress", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [5.5, 3.5]}
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 0.2}]}
    response = post(server, f"/v1/models/{MODEL}/versions/{OLDER}:regress", body)
    assert response.text.replace(" ", "").replace("\n", "") == '{"results":[2.1]}'


@pytest.mark.parametrize(
    ("method", "body", "message"),
    [
        (
            "classify",
            {"examples": [{"x": 1.0}]},
            "Expected classification signature method_name to be tensorflow/serving/classify. "
            "Was: tensorflow/serving/predict",
        ),
        (
            "regress",
            {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]},
            "Expected regression signature method_name to be tensorflow/serving/regress. "
            "Was: tensorflow/serving/classify",
        ),
        ("classify", {"signature_name": "nope", "examples": [{}]}, "No signature was found with the name: nope"),
        ("regress", {"signature_name": "regress_x_to_y"}, "key 'examples' is expected and was not found"),
        ("classify", {"examples": {"x": 1.0}}, "Expecting 'examples' value to be an list/array"),
        ("classify", {"examples": []}, "'examples' value is an empty array"),
        ("classify", {"examples": [1.0]}, "Example must be JSON object but got JSON Number"),
        ("classify", {"examples": [{"x": [1.0, "a"]}]}, "Unexpected element type in feature: x expecting type: float"),
        ("regress", {"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
        ("regress", {"examples": [{"x": 2**64 - 1}]}, "Feature: x has uint64 element. Only int64 is supported."),
        ("classify", {"examples": [{"x": {"b64": "#"}}]}, "Unable to base64 decode"),
    ],
    ids=[
        "predict-signature",
        "classify-signature",
        "unknown-signature",
        "no-examples",
        "examples-not-list",
        "empty-examples",
        "example-not-object",
        "mixed-feature-kinds",
        "null-value",
        "uint64-value",
        "bad-base64",
    ],
)
def test_classify_and_regress_errors(server, method, body, message):
    response = post(server, f"/v1/models/{MODEL}:{method}", body)
    assert response.status_code == 400
    assert set(response.json()) == {"error"} and message in response.json()["error"]


def _examples(request, values: list[float], context: float | None = None) -> None:
    if context is None:
        examples = request.input.example_list.examples
    else:
        examples = request.input.example_list_with_context.examples
        request.input.example_list_with_context.context.features.feature["x"].float_list.value.append(context)
    for value in values:
        example = examples.add()
        if value is not None:
            example.features.feature["x"].float_list.value.append(value)


def test_grpc_classify_and_regress(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "classify_x_to_y"
    _examples(request, [1.0, 2.0])
    response = stub.Classify(request, 10.0)
    assert [[(c.label, c.score) for c in row.classes] for row in response.result.classifications] == [
        [("y", 3.5)],
        [("y", 4.0)],
    ]
    assert response.model_spec.name == MODEL and response.model_spec.version.value == LATEST
    assert response.model_spec.signature_name == "classify_x_to_y"

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress_x_to_y"
    request.model_spec.version.value = OLDER
    _examples(request, [None, 1.0], context=5.0)
    response = stub.Regress(request, 10.0)
    assert [r.value for r in response.result.regressions] == [4.5, 2.5]

    request.ClearField("input")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Regress(request, 10.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "Input is empty."
    request.model_spec.signature_name = "serving_default"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Regress(request, 10.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected regression signature method_name" in caught.value.details()


# -- HandleReloadConfigRequest (last: it changes the server's config, and puts it back) -------------------


def _reload(channel, config: model_server_config_pb2.ModelServerConfig):
    request = model_management_pb2.ReloadConfigRequest(config=config)
    return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, 120.0)


def test_reload_config_swaps_models_and_labels_while_serving(server, channel, model_base):
    added = "half_plus_three_added"
    config = model_config(model_base, stable=LATEST)
    del config.model_config_list.config[2]  # PINNED goes
    config.model_config_list.config.add(name=added, base_path=str(model_base / MODEL), model_platform="tensorflow")
    try:
        response = _reload(channel, config)
        assert response.status.error_code == 0 and response.status.error_message == ""
        stable = f"/v1/models/{MODEL}/labels/stable:predict"
        assert post(server, stable, {"instances": [1.0]}).json() == {"predictions": [3.5]}
        assert post(server, f"/v1/models/{added}:predict", {"instances": [1.0]}).json() == {"predictions": [3.5]}
        response = post(server, f"/v1/models/{PINNED}:predict", {"instances": [1.0]})
        assert response.status_code == 404
        assert response.json() == {"error": f"Servable not found for request: Latest({PINNED})"}

        # Refused configs change nothing.
        duplicate = model_config(model_base, stable=LATEST)
        duplicate.model_config_list.config.add().CopyFrom(duplicate.model_config_list.config[0])
        moved = model_config(model_base, stable=7)
        for refused, code, message in (
            (duplicate, grpc.StatusCode.INVALID_ARGUMENT, f"Illegal to list model {MODEL} multiple times"),
            (
                moved,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Request to assign label to version 7 of model {MODEL}, which is not currently available "
                "for inference",
            ),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                _reload(channel, refused)
            assert caught.value.code() == code and message in caught.value.details()
        assert post(server, stable, {"instances": [1.0]}).json() == {"predictions": [3.5]}
        assert post(server, f"/v1/models/{PINNED}:predict", {"instances": [1.0]}).status_code == 404
    finally:
        _reload(channel, model_config(model_base))
    assert post(server, f"/v1/models/{PINNED}:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}
    assert post(server, f"/v1/models/{MODEL}/labels/stable:predict", {"instances": [1.0]}).json() == {
        "predictions": [2.5]
    }
