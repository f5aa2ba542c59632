"""A streaming operation on every transport (the echo service's `echo_in_parts`): refusals before the first message
answer like unstreamed requests (4xx JSON, a gRPC status with no message, an OIP error with no output); a failure
after parts were sent is framed, with the same code and message, as an SSE error event, a gRPC status after the
messages and an OIP stream error response."""

import json
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as triton_grpc

from services.kit.testing import ServerThread

sys.path.insert(0, str(Path(__file__).parent))
from echo_service import GRPC_STREAM_METHOD, EchoSettings, create_service  # noqa: E402

REFUSED = {"code": "invalid_argument", "message": "text: refused on request", "param": "text"}


@pytest.fixture(scope="module")
def server():
    settings = EchoSettings(log_level="warning", max_wait_ms=0)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def sse(server, **body) -> httpx.Response:
    return httpx.post(server.rest_url + "/v1/echo/parts", json={"text": "hi", **body}, timeout=30)


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def grpc_parts(server, **body) -> tuple[list[dict], grpc.RpcError | None]:
    received = []
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            for message in channel.unary_stream(GRPC_STREAM_METHOD)(
                json.dumps({"text": "hi", **body}).encode(), timeout=30
            ):
                received.append(json.loads(message))
        except grpc.RpcError as error:
            return received, error
    return received, None


def oip_parts(server, **parameters) -> list[tuple[object, object]]:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    text = triton_grpc.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hi"], dtype=np.object_))
    answers = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        client.async_stream_infer("echo-parts", [text], parameters=parameters)
    finally:
        client.stop_stream()
    return answers


def test_parts_then_the_result_on_every_transport(server):
    response = sse(server, parts=2)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert sse_events(response) == [
        ("echo.part", {"type": "echo.part", "index": 0, "text": "hi"}),
        ("echo.part", {"type": "echo.part", "index": 1, "text": "hi"}),
        ("echo.done", {"type": "echo.done", "echo": "hi"}),
    ]
    received, error = grpc_parts(server, parts=2)
    assert error is None and [part["type"] for part in received] == ["echo.part", "echo.part", "echo.done"]
    answers = oip_parts(server, parts=2)
    assert [error for _, error in answers] == [None] * 3
    assert [result.as_numpy("part").tolist() for result, _ in answers] == [[0], [1], [-1]]


@pytest.mark.parametrize(
    ("body", "status", "param", "grpc_code"),
    [
        ({"parts": 99}, 400, "parts", grpc.StatusCode.INVALID_ARGUMENT),  # validation
        ({"fail": "invalid"}, 400, "text", grpc.StatusCode.INVALID_ARGUMENT),  # the runner, before any part
    ],
)
def test_a_refusal_before_the_first_part_answers_like_an_unstreamed_request(
    server, body, status, param, grpc_code
):
    response = sse(server, **body)
    assert response.status_code == status and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["param"] == param
    received, error = grpc_parts(server, **body)
    assert received == [] and error.code() == grpc_code
    answers = oip_parts(server, **body)
    assert len(answers) == 1 and answers[0][1] is not None and param in str(answers[0][1])


def test_the_batchers_admission_refuses_before_the_first_part(server, monkeypatch):
    monkeypatch.setattr(server.services[0].batchers[0], "max_request_cost", 0.5)
    response = sse(server, parts=2)
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_request_cost"
    received, error = grpc_parts(server, parts=2)
    assert received == [] and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "budget" in error.details()


def test_a_failure_after_parts_is_framed_the_same_on_every_transport(server):
    response = sse(server, parts=2, fail="invalid")
    assert response.status_code == 200
    events = sse_events(response)
    assert [kind for kind, _ in events] == ["echo.part", "echo.part", "error"]
    assert events[-1][1] == {"type": "error", "error": {**REFUSED, "type": "invalid_argument"}}

    received, error = grpc_parts(server, parts=2, fail="invalid")
    assert [part["type"] for part in received] == ["echo.part", "echo.part"]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == REFUSED["message"]

    answers = oip_parts(server, parts=2, fail="invalid")
    assert [result.as_numpy("part").tolist() for result, _ in answers[:2]] == [[0], [1]]
    assert answers[2][1] is not None and str(answers[2][1]).endswith(
        f"INVALID_ARGUMENT: {REFUSED['message']}"
    )


def test_an_unexpected_failure_after_parts_is_an_internal_error_everywhere(server):
    events = sse_events(sse(server, parts=1, fail="crash"))
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {"code": "internal", "message": "internal error: RuntimeError", "type": "internal"},
        },
    )
    received, error = grpc_parts(server, parts=1, fail="crash")
    assert len(received) == 1 and error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error: RuntimeError"
    answers = oip_parts(server, parts=1, fail="crash")
    assert len(answers) == 2 and str(answers[1][1]).endswith("INTERNAL: internal error: RuntimeError")
    assert sse(server, parts=1).status_code == 200  # still serving


def test_the_openai_sdk_raises_on_the_error_event(server):
    client = openai.OpenAI(base_url=server.rest_url + "/v1", api_key="x", max_retries=0)
    stream = client.post(
        "/echo/parts",
        body={"text": "hi", "parts": 1, "fail": "invalid"},
        cast_to=object,
        stream=True,
        stream_cls=openai.Stream[object],
    )
    with pytest.raises(openai.APIError, match="refused on request"):
        list(stream)


# -- multipart forms ------------------------------------------------------------------------------------------------


def upload(server, files=None, data=None) -> httpx.Response:
    return httpx.post(server.rest_url + "/v1/echo/file", files=files, data=data, timeout=30)


def test_a_form_operation_takes_its_file_and_fields(server):
    response = upload(server, files={"file": ("hello.txt", b"hello")}, data={"delay": "0"})
    assert response.status_code == 200 and response.json() == {"echo": "hello"}
    schema = httpx.get(server.rest_url + "/openapi.json").json()
    form = schema["paths"]["/v1/echo/file"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["file"] == {"type": "string", "format": "binary"}
    assert form["required"] == ["file"] and "delay" in form["properties"]


@pytest.mark.parametrize(
    ("files", "data", "param", "message"),
    [
        (None, {"delay": "0"}, "file", "Field required"),
        ({"file": ("a.txt", b"a")}, {"voice": "x"}, "voice", "Extra inputs are not permitted"),
        ({"file": ("a.txt", b"a")}, {"delay": "soon"}, "delay", "valid number"),
        ({"file": ("a.txt", b"a"), "other": ("b.txt", b"b")}, None, "other", "unexpected file"),
        (None, {"file": "not a file"}, "file", "upload a file"),
        ([("file", ("a.txt", b"a")), ("file", ("b.txt", b"b"))], None, "file", "given more than once"),
    ],
)
def test_a_bad_form_is_refused_naming_the_part(server, files, data, param, message):
    response = upload(server, files=files, data=data)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"]


def test_a_form_with_too_many_parts_is_refused_before_it_is_read(server):
    parts = {f"field{i}": "x" for i in range(100)}
    response = upload(server, files={"file": ("a.txt", b"a")}, data=parts)
    assert response.status_code == 400 and "Too many fields" in response.json()["error"]["message"]
