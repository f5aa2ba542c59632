"""The Open Inference Protocol (v2) as Triton's own client speaks it, against the kit's echo service."""

import gzip
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from services.kit.testing import ServerThread, free_port

sys.path.insert(0, str(Path(__file__).parent))
from echo_service import EchoSettings, create_service  # noqa: E402


@pytest.fixture(scope="module")
def server():
    settings = EchoSettings(max_body_bytes=1_000_000)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def http_client(server):
    return triton_http.InferenceServerClient(server.rest_url.removeprefix("http://"))


@pytest.fixture(scope="module")
def grpc_client(server):
    return triton_grpc.InferenceServerClient(server.grpc_target)


def text_input(module, text: str, binary: bool = True):
    tensor = module.InferInput("text", [1], "BYTES")
    data = np.array([text.encode()], dtype=np.object_)
    if module is triton_http:
        tensor.set_data_from_numpy(data, binary_data=binary)
    else:
        tensor.set_data_from_numpy(data)
    return tensor


def test_health_and_metadata_over_http(http_client):
    assert http_client.is_server_live()
    assert http_client.is_server_ready()
    assert http_client.is_model_ready("echo")
    assert not http_client.is_model_ready("nope")
    server = http_client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    model = http_client.get_model_metadata("echo")
    assert model["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [1]}]
    assert model["outputs"] == [{"name": "echo", "datatype": "BYTES", "shape": [1]}]


def test_health_and_metadata_over_grpc(grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("echo")
    metadata = grpc_client.get_model_metadata("echo", as_json=True)
    assert metadata["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": ["1"]}


@pytest.mark.parametrize("binary", [True, False])
def test_infer_over_http(http_client, binary):
    result = http_client.infer("echo", [text_input(triton_http, "hallo", binary)], request_id="r-1")
    assert result.as_numpy("echo").tolist() == [b"hallo"]
    assert result.get_response()["id"] == "r-1"


def test_infer_over_http_with_json_outputs_and_parameters(http_client):
    outputs = [triton_http.InferRequestedOutput("echo", binary_data=False)]
    result = http_client.infer(
        "echo", [text_input(triton_http, "slow", binary=False)], outputs=outputs, parameters={"delay": 0.01}
    )
    assert result.get_response()["outputs"][0]["data"] == ["slow"]


def test_infer_over_grpc_and_a_version_path(grpc_client):
    result = grpc_client.infer("echo", [text_input(triton_grpc, "ciao")], model_version="1")
    assert result.as_numpy("echo").tolist() == [b"ciao"]


def test_stream_infer_answers_each_request_and_survives_an_error(grpc_client):
    answers = []
    grpc_client.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        grpc_client.async_stream_infer("echo", [text_input(triton_grpc, "one")], request_id="a")
        grpc_client.async_stream_infer("echo", [text_input(triton_grpc, "two")], request_id="b",
                                       parameters={"colour": "red"})
        grpc_client.async_stream_infer("echo", [text_input(triton_grpc, "three")], request_id="c")
    finally:
        grpc_client.stop_stream()
    assert len(answers) == 3
    assert answers[0][0].as_numpy("echo").tolist() == [b"one"]
    assert answers[1][1] is not None and "colour" in str(answers[1][1])
    assert answers[2][0].as_numpy("echo").tolist() == [b"three"]


def test_unknown_model_and_version_are_not_found(http_client, grpc_client, server):
    response = httpx.post(f"{server.rest_url}/v2/models/nope/infer", json={"inputs": []})
    assert response.status_code == 404 and "nope" in response.json()["error"]
    response = httpx.get(f"{server.rest_url}/v2/models/echo/versions/7")
    assert response.status_code == 404 and "version '7'" in response.json()["error"]
    with pytest.raises(InferenceServerException, match="unknown model"):
        grpc_client.get_model_metadata("nope")
    # Readiness answers outside the readiness gate, with the same status.
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.is_model_ready("nope")
    assert raised.value.status() == str(grpc.StatusCode.NOT_FOUND)


def post(server, document: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.rest_url}/v2/models/echo/infer", json=document, **kwargs)


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, "txt"),
        ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "FP32"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}, "shape [2]"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [1]}]}, "strings"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
          "parameters": {"colour": "red"}}, "colour"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
          "parameters": {"delay": "soon"}}, "delay"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
          "outputs": [{"name": "shout"}]}, "shout"),
        ({"inputs": []}, "needs input"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
          "parameters": {"delay": 99}}, "delay"),
    ],
)
def test_bad_requests_get_400_naming_the_problem(server, document, named):
    response = post(server, document)
    assert response.status_code == 400
    assert named in response.json()["error"]


def test_declared_shape_is_bounded_before_data_is_read(server):
    """A shape claiming 10^12 elements is refused from the declaration, whatever data follows."""
    document = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1_000_000, 1_000_000], "data": ["a"]}]}
    response = post(server, document)
    assert response.status_code == 400 and "shape" in response.json()["error"]


def test_json_element_flood_is_refused_before_parsing(server):
    flood = '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [' + "0," * 200_000 + '0]}]}'
    response = httpx.post(f"{server.rest_url}/v2/models/echo/infer", content=flood)
    assert response.status_code == 400 and "elements" in response.json()["error"]


def test_binary_extension_with_bad_lengths(server):
    header = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]}
    ).encode()
    # The element claims 1,000,000 bytes where 5 follow.
    body = header + struct.pack("<I", 1_000_000) + b"hello"
    response = httpx.post(
        f"{server.rest_url}/v2/models/echo/infer", content=body,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400 and "length-prefixed" in response.json()["error"]
    good = header + struct.pack("<I", 5) + b"hello"
    response = httpx.post(
        f"{server.rest_url}/v2/models/echo/infer", content=good,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text


def test_compressed_body_that_inflates_past_the_limit_is_413(server):
    bomb = gzip.compress(b" " * 5_000_000)
    response = httpx.post(
        f"{server.rest_url}/v2/models/echo/infer", content=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 413


def test_compressed_request_from_tritonclient(http_client):
    result = http_client.infer("echo", [text_input(triton_http, "zip")], request_compression_algorithm="gzip")
    assert result.as_numpy("echo").tolist() == [b"zip"]


def test_grpc_tensor_contents_instead_of_raw_bytes(server):
    """Clients other than Triton's send data in InferTensorContents; the same shape checks apply."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="echo")
        tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(b"contents")
        response = stub.ModelInfer(request)
        assert response.outputs[0].name == "echo"
        assert response.raw_output_contents[0] == struct.pack("<I", 8) + b"contents"
        tensor.contents.bytes_contents.append(b"one too many")
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "2" in raised.value.details()


def test_grpc_bad_request_is_invalid_argument(server):
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    tensor = triton_grpc.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([b"a", b"b", b"c"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("echo", [tensor])
    assert raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT) and "shape" in raised.value.message()


def test_health_and_readiness_answer_while_the_model_loads():
    """Probes and ModelReady say "not ready" while loading; inference and metadata wait behind the readiness gate."""
    rest, grpc_port = free_port(), free_port()
    environment = {**os.environ, "ECHO_REST_PORT": str(rest), "ECHO_GRPC_PORT": str(grpc_port),
                   "ECHO_HOST": "127.0.0.1", "ECHO_LOG_LEVEL": "warning", "ECHO_LOAD_SECONDS": "30"}
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "echo_service.py")], env=environment)
    try:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                assert client.is_server_live()
                break
            except InferenceServerException:
                assert time.monotonic() < deadline, "the gRPC port never opened"
                time.sleep(0.1)
        assert not client.is_server_ready()
        assert not client.is_model_ready("echo")
        with pytest.raises(InferenceServerException) as raised:
            client.is_model_ready("nope")
        assert raised.value.status() == str(grpc.StatusCode.NOT_FOUND)
        with pytest.raises(InferenceServerException) as raised:
            client.get_model_metadata("echo")
        assert raised.value.status() == str(grpc.StatusCode.UNAVAILABLE)
        assert httpx.get(f"http://127.0.0.1:{rest}/v2/health/live").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{rest}/v2/health/ready").status_code == 503
    finally:
        process.kill()
        process.wait()
