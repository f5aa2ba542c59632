"""Access logs: exactly one structured line per request, with where its time went, and never its payload or key."""

import json
import logging
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from services.kit import logs
from services.kit.testing import ServerThread

sys.path.insert(0, str(Path(__file__).parent))
from echo_process import EchoProcess  # noqa: E402
from echo_service import GRPC_METHOD, EchoSettings, create_service  # noqa: E402

KEY = "sk-logging-test-5f1c9e0d7a2b"
SECRET = "a payload sentence that must never reach a log"
FIELDS = {
    "request_id", "service", "protocol", "method", "route", "status", "duration_ms", "queue_ms", "compute_ms",
    "batch_size", "batches", "batcher", "bytes_in", "bytes_out",
}


@pytest.fixture(scope="module")
def server():
    settings = EchoSettings(log_level="warning", max_wait_ms=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELSERVE_API_KEYS", KEY)
        with ServerThread(lambda: [create_service(settings)], settings) as running:
            yield running


class AccessLines(logging.Handler):
    """The access logger's lines, formatted exactly as the JSON log format writes them."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.raw: list[str] = []

    def emit(self, record):
        self.raw.append(self.format(record))

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict]:
        """The line is written once the response has gone out: the client may see the answer first."""
        deadline = time.monotonic() + timeout
        while len(self.raw) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # and no second line follows
        return [json.loads(line) for line in self.raw]


@pytest.fixture
def access():
    handler = AccessLines()
    logs.access_log.addHandler(handler)
    logs.access_log.setLevel(logging.INFO)
    yield handler
    logs.access_log.removeHandler(handler)
    logs.access_log.setLevel(logging.NOTSET)


def assert_clean(raw: list[str]) -> None:
    for line in raw:
        assert SECRET not in line and KEY not in line and "Bearer" not in line


def test_a_rest_request_writes_one_line_with_its_queue_and_compute_times(server, access):
    body = json.dumps({"text": SECRET, "delay": 0.05}).encode()
    response = httpx.post(
        server.rest_url + "/v1/echo", content=body,
        headers={"authorization": f"Bearer {KEY}", "x-request-id": "rest-log-1", "content-type": "application/json"},
    )
    assert response.status_code == 200
    (line,) = access.wait_for(1)
    assert FIELDS <= set(line)
    assert line["request_id"] == "rest-log-1" and line["service"] == "echo" and line["protocol"] == "rest"
    assert line["method"] == "POST" and line["route"] == "/v1/echo" and line["status"] == "200"
    assert line["batcher"] == "echo.echo" and line["batch_size"] == 1 and line["batches"] == 1
    assert 0 <= line["queue_ms"] < 1000
    assert line["compute_ms"] >= 50  # the runner's 50 ms
    assert line["duration_ms"] >= line["compute_ms"] + line["queue_ms"] - 1
    assert line["bytes_in"] == len(body) and line["bytes_out"] == len(response.content)
    assert line["level"] == "INFO" and line["logger"] == "modelserve.access"
    assert_clean(access.raw)


def test_a_grpc_request_writes_one_line(server, access):
    request = json.dumps({"text": SECRET, "delay": 0.02}).encode()
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = channel.unary_unary(GRPC_METHOD)(
            request, metadata=(("authorization", f"Bearer {KEY}"), ("x-request-id", "grpc-log-1")), timeout=5
        )
    (line,) = access.wait_for(1)
    assert line["request_id"] == "grpc-log-1" and line["protocol"] == "grpc" and line["service"] == "echo"
    assert line["route"] == GRPC_METHOD and line["status"] == "OK" and line["method"] is None
    assert line["batch_size"] == 1 and line["compute_ms"] >= 20 and line["queue_ms"] >= 0
    assert line["bytes_in"] == len(request) and line["bytes_out"] == len(answer)
    assert_clean(access.raw)


def test_refused_and_invalid_requests_are_logged_without_what_they_sent(server, access):
    wrong_key = "sk-wrong-key-that-must-not-be-logged"
    assert httpx.post(server.rest_url + "/v1/echo", json={"text": SECRET}).status_code == 401
    assert httpx.post(
        server.rest_url + "/v1/echo", json={"text": SECRET}, headers={"authorization": f"Bearer {wrong_key}"}
    ).status_code == 401
    invalid = httpx.post(
        server.rest_url + "/v1/echo", json={"text": SECRET, "delay": -1}, headers={"authorization": f"Bearer {KEY}"}
    )
    assert invalid.status_code == 400
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(GRPC_METHOD)(b"{}", metadata=(("authorization", f"Bearer {wrong_key}"),), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    lines = access.wait_for(4)
    assert [(line["protocol"], line["status"]) for line in lines] == [
        ("rest", "401"), ("rest", "401"), ("rest", "400"), ("grpc", "UNAUTHENTICATED")
    ]
    assert all(line["queue_ms"] is None and line["batch_size"] is None for line in lines)  # never queued
    assert all(line["route"] in ("/v1/echo", GRPC_METHOD) for line in lines)
    assert_clean(access.raw)
    assert not any(wrong_key in line for line in access.raw)


def test_probes_and_metrics_write_no_access_lines(server, access):
    httpx.get(server.rest_url + "/healthz")
    httpx.get(server.rest_url + "/readyz")
    httpx.get(server.rest_url + "/metrics", headers={"authorization": f"Bearer {KEY}"})
    assert access.wait_for(1, timeout=0.3) == []


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_the_entry_point_writes_one_line_per_request_and_no_repeated_warnings(log_format):
    env = {"ECHO_LOG_FORMAT": log_format, "ECHO_LOG_LEVEL": "info", "MODELSERVE_API_KEYS": KEY}
    with EchoProcess(env) as echo:
        for number in range(5):
            headers = {"authorization": f"Bearer {KEY}", "x-request-id": f"rest-{number}"}
            assert httpx.post(echo.rest_url + "/v1/echo", json={"text": SECRET}, headers=headers).status_code == 200
        with grpc.insecure_channel(echo.grpc_target) as channel:
            for number in range(5):
                metadata = (("authorization", f"Bearer {KEY}"), ("x-request-id", f"grpc-{number}"))
                channel.unary_unary(GRPC_METHOD)(json.dumps({"text": SECRET}).encode(), metadata=metadata, timeout=5)
        time.sleep(0.2)
    lines = echo.stderr.splitlines()
    assert SECRET not in echo.stderr and KEY not in echo.stderr
    if log_format == "text":
        access = [line for line in lines if " modelserve.access: " in line]
        assert len(access) == 10
        assert "route=/v1/echo" in access[0] and "status=200" in access[0] and "request_id=rest-0" in access[0]
        assert not [line for line in lines if " WARNING " in line or " ERROR " in line]
        return
    entries = [json.loads(line) for line in lines]  # every line is JSON, uvicorn's and the kit's alike
    access = [entry for entry in entries if entry["logger"] == "modelserve.access"]
    assert sorted(entry["request_id"] for entry in access) == sorted(
        [f"rest-{n}" for n in range(5)] + [f"grpc-{n}" for n in range(5)]
    )
    assert not [entry for entry in entries if entry["logger"] == "uvicorn.access"]  # no second line per request
    assert not [entry for entry in entries if entry["level"] in ("WARNING", "ERROR", "CRITICAL")]
    assert any(entry["logger"] == "uvicorn.error" for entry in entries)  # uvicorn's own lines come through as JSON
