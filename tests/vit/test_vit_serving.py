"""The tiny ViT behind the TF Serving-compatible server: the Hugging Face blog's clients unchanged,
dynamic batching across requests, bad input, and versions appearing and disappearing on disk."""

import base64
import io
import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MODEL = "hf-vit"


@pytest.fixture(scope="module")
def reference(vit_server):
    """The exported SavedModel called directly: what every served answer must equal."""
    loaded = tf.saved_model.load(str(vit_server.settings.model_base / MODEL / "1"))

    def classify(data: bytes) -> tuple[str, float]:
        out = loaded.signatures["serving_default"](string_input=tf.constant([base64.urlsafe_b64encode(data)]))
        return out["label"].numpy()[0].decode(), float(out["confidence"].numpy()[0])

    return classify


def predict(server, body, version: int | None = None) -> requests.Response:
    path = f"/v1/models/{MODEL}" + (f"/versions/{version}" if version else "") + ":predict"
    return requests.post(server.rest_url + path, json=body, timeout=60)


def metric(server, name: str) -> float:
    text = requests.get(server.rest_url + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_startup_exported_the_checkpoint_in_tf_serving_layout(vit_server):
    model_dir = vit_server.settings.model_base / MODEL
    assert (model_dir / "1" / "saved_model.pb").is_file()
    assert (model_dir / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert (model_dir / "batching_parameters.txt").is_file()
    assert requests.get(vit_server.rest_url + "/readyz", timeout=10).status_code == 200


def test_hf_blog_rest_client_works_unchanged(vit_server, images, reference):
    # The snippet from "Deploying ViT on Kubernetes with TF Serving", pointed at this server.
    b64str = base64.urlsafe_b64encode(images[1]).decode("utf-8")
    data = json.dumps({"signature_name": "serving_default", "instances": [b64str]})
    headers = {"content-type": "application/json"}
    json_response = requests.post(
        f"{vit_server.rest_url}/v1/models/{MODEL}:predict", data=data, headers=headers
    )
    predictions = json.loads(json_response.text)["predictions"]

    label, confidence = reference(images[1])
    assert predictions == [{"label": label, "confidence": pytest.approx(confidence, abs=1e-6)}]
    config = json.loads((Path(vit_server.settings.checkpoint) / "config.json").read_text())
    assert label in config["id2label"].values() and 0 < confidence <= 1


def test_b64_objects_row_and_columnar_and_top_k(vit_server, images, reference):
    encoded = [{"b64": base64.b64encode(data).decode()} for data in images[:3]]
    rows = predict(vit_server, {"instances": encoded}).json()["predictions"]
    expected = [reference(data) for data in images[:3]]
    assert [(p["label"], p["confidence"]) for p in rows] == [
        (label, pytest.approx(c, abs=1e-6)) for label, c in expected
    ]

    columns = predict(vit_server, {"signature_name": "top_k", "inputs": encoded}).json()["outputs"]
    assert len(columns["labels"]) == 3 and all(len(labels) == 5 for labels in columns["labels"])
    for (label, confidence), labels, scores in zip(
        expected, columns["labels"], columns["scores"], strict=True
    ):
        assert labels[0] == label and scores[0] == pytest.approx(confidence, abs=1e-6)
        assert scores == sorted(scores, reverse=True)


def test_hf_blog_grpc_client_works_unchanged(vit_server, images, reference):
    channel = grpc.insecure_channel(vit_server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    b64str = base64.urlsafe_b64encode(images[0]).decode("utf-8")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_default"
    request.inputs["string_input"].CopyFrom(tf.make_tensor_proto([b64str]))
    grpc_predictions = stub.Predict(request, 10.0)
    channel.close()

    label, confidence = reference(images[0])
    assert tf.make_ndarray(grpc_predictions.outputs["label"])[0].decode() == label
    assert float(tf.make_ndarray(grpc_predictions.outputs["confidence"])[0]) == pytest.approx(
        confidence, abs=1e-6
    )


def test_concurrent_requests_share_model_calls_and_get_their_own_answers(vit_server, images, reference):
    calls_before = metric(vit_server, "vit_signature_calls_total")
    requests_sent = 10
    bodies = [
        {"instances": [base64.urlsafe_b64encode(images[i % len(images)]).decode()]}
        for i in range(requests_sent)
    ]
    with ThreadPoolExecutor(requests_sent) as pool:
        answers = list(pool.map(lambda body: predict(vit_server, body).json()["predictions"][0], bodies))
    calls = metric(vit_server, "vit_signature_calls_total") - calls_before
    assert calls < requests_sent, "no two requests were merged into one model call"
    for i, answer in enumerate(answers):
        label, confidence = reference(images[i % len(images)])
        assert answer == {"label": label, "confidence": pytest.approx(confidence, abs=1e-5)}


def test_a_bad_image_in_a_merged_batch_fails_only_its_own_request(vit_server, images):
    good = {"instances": [base64.urlsafe_b64encode(images[0]).decode()]}
    bad = {"instances": [{"b64": base64.b64encode(b"definitely not an image").decode()}]}
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda body: predict(vit_server, body), [good, bad, good, good, bad, good]))
    assert [r.status_code for r in responses] == [200, 400, 200, 200, 400, 200]
    assert "image" in responses[1].json()["error"].lower()


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"instances": [{"b64": "this is not base64!"}]}, 400, "Unable to base64 decode"),
        ({"instances": ["this is not base64 either!"]}, 400, "image"),
        ({"instances": [{"b64": base64.b64encode(b"plain text, no image").decode()}]}, 400, "image"),
        ({"instances": [{"b64": ""}]}, 400, ""),
        ({"instances": [{"b64": base64.b64encode(_png(7100, 7100)).decode()}]}, 400, "7100x7100 pixels"),
        (
            {"signature_name": "nope", "instances": ["x"]},
            400,
            'Serving signature name: "nope" not found',
        ),
        ({"instances": ["x"], "inputs": ["x"]}, 400, "only one of 'inputs' or 'instances'"),
        ({"instances": [{"b64": "QUJD", "extra": 1}]}, 400, "does not have named input"),
        ({"instances": "x"}, 400, "list/array"),
        ({"instances": []}, 400, "No values in 'instances' array"),
        ({"instances": [1.5]}, 400, "is not of expected type: string"),
    ],
    ids=[
        "not-base64",
        "plain-string-not-base64",
        "not-an-image",
        "zero-bytes",
        "50-megapixels",
        "wrong-signature",
        "both-formats",
        "b64-extra-key",
        "instances-not-list",
        "no-instances",
        "number-not-string",
    ],
)
def test_bad_input_gets_tf_serving_error_and_server_keeps_serving(vit_server, images, body, status, message):
    response = predict(vit_server, body)
    assert response.status_code == status
    assert list(response.json()) == ["error"] and isinstance(response.json()["error"], str)
    assert message in response.json()["error"]
    good = predict(vit_server, {"instances": [base64.urlsafe_b64encode(images[2]).decode()]})
    assert good.status_code == 200


def test_non_json_unknown_model_and_version(vit_server):
    response = requests.post(
        f"{vit_server.rest_url}/v1/models/{MODEL}:predict", data=b"\x89PNG...", timeout=10
    )
    assert response.status_code == 400 and response.json()["error"].startswith("JSON Parse error")
    response = requests.post(f"{vit_server.rest_url}/v1/models/resnet:predict", json={"instances": ["x"]})
    assert response.status_code == 404
    assert response.json() == {"error": "Servable not found for request: Latest(resnet)"}
    response = predict(vit_server, {"instances": ["x"]}, version=42)
    assert response.json() == {"error": f"Servable not found for request: Specific({MODEL}, 42)"}
    response = requests.get(f"{vit_server.rest_url}/v1/models/{MODEL}/versions/abc", timeout=10)
    assert response.status_code == 400 and response.json()["error"].startswith("Malformed request")


def test_grpc_bad_image_is_invalid_argument(vit_server):
    with grpc.insecure_channel(vit_server.grpc_target) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["string_input"].CopyFrom(tf.make_tensor_proto([b"GIF89a broken"]))
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 10.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _wait_for_versions(server, expected: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = requests.get(f"{server.rest_url}/v1/models/{MODEL}", timeout=10).json()[
            "model_version_status"
        ]
        if {s["version"] for s in statuses if s["state"] == "AVAILABLE"} == expected:
            return
        time.sleep(0.2)
    pytest.fail(f"versions never became {expected}: {statuses}")


def _version_states(server) -> dict[str, str]:
    statuses = requests.get(f"{server.rest_url}/v1/models/{MODEL}", timeout=10).json()["model_version_status"]
    return {s["version"]: s["state"] for s in statuses}


def test_a_new_version_replaces_the_served_one_and_its_removal_brings_it_back(vit_server, images):
    # TF Serving's default version policy (latest, one version): the new version serves, the old one is
    # unloaded and reported as END; removing the new one makes the old one the latest again.
    model_dir = vit_server.settings.model_base / MODEL
    body = {"instances": [base64.urlsafe_b64encode(images[0]).decode()]}
    answer_v1 = predict(vit_server, body).json()
    # A new version lands the way the exporter writes it: complete, then renamed into place.
    shutil.copytree(model_dir / "1", model_dir / ".2-staging")
    (model_dir / ".2-staging").rename(model_dir / "2")
    try:
        _wait_for_versions(vit_server, {"2"})
        assert _version_states(vit_server) == {"2": "AVAILABLE", "1": "END"}
        with grpc.insecure_channel(vit_server.grpc_target) as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.inputs["string_input"].CopyFrom(
                tf.make_tensor_proto([base64.urlsafe_b64encode(images[0])])
            )
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 10.0)
        assert response.model_spec.version.value == 2, "the latest version serves requests without a version"
        assert predict(vit_server, body, version=2).json() == answer_v1  # a copy of version 1
        assert predict(vit_server, body, version=1).status_code == 404
    finally:
        shutil.rmtree(model_dir / "2")
    _wait_for_versions(vit_server, {"1"})
    assert predict(vit_server, {"instances": ["x"]}, version=2).status_code == 404
    assert predict(vit_server, body, version=1).json() == answer_v1


def test_metrics_and_model_listing(vit_server):
    text = requests.get(vit_server.rest_url + "/metrics", timeout=10).text
    for name in (
        "vit_signature_calls_total",
        "vit_predicted_rows_total",
        "vit_model_latest_version",
        "serving_batch_size",
    ):
        assert name in text
    listing = requests.get(vit_server.rest_url + "/v1/models", timeout=10).json()["data"]
    assert [entry["id"] for entry in listing] == [MODEL]
    assert 1 in listing[0]["versions"]


def test_a_broken_version_is_reported_and_does_not_replace_the_served_one(vit_server, images):
    broken = vit_server.settings.model_base / MODEL / "5"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = requests.get(f"{vit_server.rest_url}/v1/models/{MODEL}/versions/5", timeout=10)
            if response.status_code == 200:
                break
            time.sleep(0.2)
        (status,) = response.json()["model_version_status"]
        assert status["state"] == "END" and status["status"]["error_message"]
        body = {"instances": [base64.urlsafe_b64encode(images[0]).decode()]}
        assert predict(vit_server, body).status_code == 200  # still version 1
        assert predict(vit_server, body, version=5).status_code == 404
    finally:
        shutil.rmtree(broken)


def test_classify_answers_what_the_top_k_signature_predicts(vit_server, images):
    # The exported classify signature (tf.Example in, image bytes in "image/encoded") ranks like top_k.
    encoded = [{"b64": base64.b64encode(data).decode()} for data in images[:2]]
    top_k = predict(vit_server, {"signature_name": "top_k", "inputs": encoded}).json()["outputs"]
    body = {"signature_name": "classify", "examples": [{"image/encoded": value} for value in encoded]}
    response = requests.post(f"{vit_server.rest_url}/v1/models/{MODEL}:classify", json=body, timeout=60)
    assert response.status_code == 200, response.text
    for classes, labels, scores in zip(response.json()["results"], top_k["labels"], top_k["scores"], strict=True):
        assert [label for label, _ in classes] == labels
        assert [score for _, score in classes] == pytest.approx(scores, abs=1e-6)
