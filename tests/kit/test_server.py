"""The kit's servers end to end on loopback: readiness, errors, limits, metrics, gRPC, drain."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit.testing import ServerThread, free_port

sys.path.insert(0, str(Path(__file__).parent))
from echo_service import GRPC_METHOD, EchoSettings, create_service  # noqa: E402


@pytest.fixture(scope="module")
def server():
    settings = EchoSettings(max_body_bytes=64 * 1024, log_level="warning", max_wait_ms=0)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def say(target: str, payload: dict, timeout: float = 5.0) -> bytes:
    # The client needs a raised receive limit too, to read back the large echo.
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(GRPC_METHOD)
        return call(json.dumps(payload).encode(), timeout=timeout)


def test_liveness_readiness_and_request_id(server):
    assert httpx.get(server.rest_url + "/healthz").status_code == 200
    ready = httpx.get(server.rest_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["services"] == ["echo"]
    response = httpx.post(server.rest_url + "/v1/echo", json={"text": "hi"}, headers={"x-request-id": "abc-123"})
    assert response.json() == {"echo": "hi"}
    assert response.headers["x-request-id"] == "abc-123"
    assert len(httpx.post(server.rest_url + "/v1/echo", json={"text": "hi"}).headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    "send, status, code, mentions",
    [
        (dict(json={"text": ""}), 400, "invalid_argument", "text"),
        (dict(json={"text": 5}), 400, "invalid_argument", "text"),
        (dict(json={"nope": 1}), 400, "invalid_argument", "text"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_argument", "JSON"),
        (dict(content=b"text=hi"), 400, "invalid_argument", "JSON object"),
        (dict(json={"text": "x", "fail": "invalid"}), 400, "invalid_argument", "refused"),
        (dict(json={"text": "x", "fail": "crash"}), 500, "internal", "RuntimeError"),
        (dict(content=b"x" * 100_000, headers={"content-type": "application/json"}), 413, "payload_too_large", "limit"),
    ],
)
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server, send, status, code, mentions):
    response = httpx.post(server.rest_url + "/v1/echo", **send)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and mentions in error["message"]
    assert httpx.post(server.rest_url + "/v1/echo", json={"text": "still here"}).json() == {"echo": "still here"}


def test_streamed_body_over_the_limit_gets_413(server):
    def chunks():
        for _ in range(20):
            yield b"x" * 8192  # chunked: no Content-Length to refuse early

    response = httpx.post(server.rest_url + "/v1/echo", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_unknown_route_is_a_json_404(server):
    response = httpx.get(server.rest_url + "/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_models_are_listed_in_openai_shape(server):
    body = httpx.get(server.rest_url + "/v1/models").json()
    assert body["object"] == "list"
    assert body["data"] == [{"object": "model", "owned_by": "modelserve", "service": "echo", "id": "echo-1"}]


def test_grpc_call_errors_map_to_status_codes(server):
    assert say(server.grpc_target, {"text": "hi"}) == b"hi"
    with pytest.raises(grpc.RpcError) as invalid:
        say(server.grpc_target, {"text": "x", "fail": "invalid"})
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "refused" in invalid.value.details()
    with pytest.raises(grpc.RpcError) as crash:
        say(server.grpc_target, {"text": "x", "fail": "crash"})
    assert crash.value.code() == grpc.StatusCode.INTERNAL


def test_grpc_deadline_is_honoured_and_the_request_is_not_computed_later(server):
    runner = server.services[0].runner
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(say, server.grpc_target, {"text": "busy", "delay": 0.6})
        time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as late:
            say(server.grpc_target, {"text": "too-late"}, timeout=0.2)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert busy.result() == b"busy"
    time.sleep(0.1)
    assert "too-late" not in runner.computed


def test_grpc_health_and_message_size_limit(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "echo.v1.Echo"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # 6 MiB is over gRPC's 4 MiB default; the kit raises the limit (32 MiB by default).
    big = {"text": "y" * (6 * 1024 * 1024)}
    assert len(say(server.grpc_target, big)) == 6 * 1024 * 1024


def test_metrics_cover_routes_queue_compute_and_batches(server):
    httpx.post(server.rest_url + "/v1/echo", json={"text": "m"})
    text = httpx.get(server.rest_url + "/metrics").text
    for needle in (
        'serving_requests_total{protocol="rest",route="/v1/echo",status="200"}',
        'serving_requests_total{protocol="grpc",route="/echo.v1.Echo/Say",status="INVALID_ARGUMENT"}',
        'serving_queue_seconds_bucket{batcher="echo.echo"',
        'serving_compute_seconds_count{batcher="echo.echo"}',
        'serving_batch_size_count{batcher="echo.echo"}',
        'serving_queue_depth{batcher="echo.echo"}',
        'serving_inflight_requests{protocol="rest"}',
    ):
        assert needle in text, needle


def test_overload_answers_503_with_retry_after():
    settings = EchoSettings(max_queue=1, max_batch_size=1, max_wait_ms=0, retry_after_s=2, log_level="warning")
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(httpx.post, server.rest_url + "/v1/echo", json={"text": str(i), "delay": 0.5}, timeout=10)
                for i in range(6)
            ]
            responses = [f.result() for f in futures]
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 2 and 503 in statuses
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["code"] == "overloaded"


def _start_echo_process(**env) -> tuple[subprocess.Popen, str]:
    rest, grpc_port = free_port(), free_port()
    environment = {**os.environ, "ECHO_REST_PORT": str(rest), "ECHO_GRPC_PORT": str(grpc_port),
                   "ECHO_HOST": "127.0.0.1", "ECHO_LOG_LEVEL": "warning", **env}
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "echo_service.py")], env=environment)
    return process, f"http://127.0.0.1:{rest}"


def _wait_for(url: str, status: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == status:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} never answered {status}")


def test_readiness_follows_loading_and_sigterm_drains_the_request_in_flight():
    process, url = _start_echo_process(ECHO_LOAD_SECONDS="1.5", ECHO_SHUTDOWN_GRACE_S="10")
    try:
        _wait_for(url + "/healthz", 200)
        assert httpx.get(url + "/readyz").status_code == 503, "not ready while the model loads"
        early = httpx.post(url + "/v1/echo", json={"text": "early"})
        assert early.status_code == 503 and "retry-after" in early.headers
        _wait_for(url + "/readyz", 200)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, url + "/v1/echo", json={"text": "slow", "delay": 2.0}, timeout=20)
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert httpx.get(url + "/readyz").status_code == 503, "readiness fails as soon as draining starts"
            response = in_flight.result()
        assert response.status_code == 200 and response.json() == {"echo": "slow"}
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
