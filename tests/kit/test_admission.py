"""What the kit lets in: API keys, the in-flight limit, slow bodies, draining, liveness and bounded metrics."""

import concurrent.futures
import json
import signal
import socket
import sys
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.kit.auth import ApiKeys
from services.kit.testing import ServerThread

sys.path.insert(0, str(Path(__file__).parent))
from echo_service import EchoSettings, create_service  # noqa: E402
from test_server import _start_echo_process, _wait_for, say  # noqa: E402

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def keyed_server():
    settings = EchoSettings(log_level="warning", max_wait_ms=0)
    server = ServerThread(lambda: [create_service(settings)], settings)
    with pytest.MonkeyPatch.context() as patch:  # the keys are read once, at start-up
        patch.setenv("MODELSERVE_API_KEYS", f"other-key, {KEY}")
        server.start()
    yield server
    server.stop()


def test_rest_routes_need_a_bearer_key_but_probes_do_not(keyed_server):
    url = keyed_server.rest_url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        refused = httpx.post(url + "/v1/echo", json={"text": "hi"}, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert refused.headers["www-authenticate"] == "Bearer"
    ok = httpx.post(url + "/v1/echo", json={"text": "hi"}, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.json() == {"echo": "hi"}
    assert httpx.get(url + "/healthz").status_code == 200
    assert httpx.get(url + "/readyz").status_code == 200
    assert httpx.get(url + "/metrics").status_code == 401, "metrics on the API port need the key too"
    assert httpx.get(url + "/docs").status_code == 401
    assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_the_official_openai_sdk_api_key_just_works(keyed_server):
    good = openai.OpenAI(base_url=keyed_server.rest_url + "/v1", api_key=KEY, max_retries=0)
    assert [model.id for model in good.models.list()] == ["echo-1"]
    bad = openai.OpenAI(base_url=keyed_server.rest_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_grpc_methods_need_the_key_in_metadata_but_health_does_not(keyed_server):
    target = keyed_server.grpc_target
    with pytest.raises(grpc.RpcError) as missing:
        say(target, {"text": "hi"})
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/echo.v1.Echo/Say")
        with pytest.raises(grpc.RpcError) as wrong:
            call(json.dumps({"text": "hi"}).encode(), metadata=[("authorization", "Bearer nope")], timeout=5)
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert call(json.dumps({"text": "hi"}).encode(), metadata=[("authorization", f"Bearer {KEY}")], timeout=5) == b"hi"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as reflected:
            list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([listing]), timeout=5))
        assert reflected.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_mounted_key_file_is_read_and_rotated(tmp_path, monkeypatch):
    import services.kit.auth as auth

    monkeypatch.setattr(auth, "FILE_CHECK_S", 0.0)
    key_file = tmp_path / "api-keys"
    absent = ApiKeys(file=str(key_file))
    assert absent.enabled and not absent.allows(None), "a configured key file that is not there refuses everyone"
    key_file.write_text("# rotated monthly\nfirst-key\n\nsecond-key\n")
    keys = ApiKeys(file=str(key_file))
    assert keys.allows("Bearer second-key") and not keys.allows("Bearer third-key") and not keys.allows(None)
    time.sleep(0.01)
    key_file.write_text("third-key\n")
    assert keys.allows("Bearer third-key") and not keys.allows("Bearer first-key")


def test_docs_and_reflection_can_be_switched_off():
    settings = EchoSettings(log_level="warning", docs=False, grpc_reflection=False)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        assert httpx.get(server.rest_url + "/docs").status_code == 404
        assert httpx.get(server.rest_url + "/openapi.json").status_code == 404
        with grpc.insecure_channel(server.grpc_target) as channel:
            listing = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as off:
                list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([listing]), timeout=5))
            assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_metrics_can_move_to_their_own_port():
    from services.kit.testing import free_port

    settings = EchoSettings(log_level="warning", metrics_port=free_port())
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        httpx.post(server.rest_url + "/v1/echo", json={"text": "m"})
        assert httpx.get(server.rest_url + "/metrics").status_code == 404
        text = httpx.get(f"http://127.0.0.1:{settings.metrics_port}/metrics").text
        assert 'serving_requests_total{protocol="rest",route="/v1/echo",status="200"}' in text


def test_in_flight_limit_answers_503_and_resource_exhausted():
    settings = EchoSettings(log_level="warning", max_concurrency=2, max_batch_size=8, max_wait_ms=0, retry_after_s=3)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            slow = [
                pool.submit(httpx.post, server.rest_url + "/v1/echo", json={"text": str(i), "delay": 0.8}, timeout=10)
                for i in range(2)
            ]
            time.sleep(0.3)
            refused = httpx.post(server.rest_url + "/v1/echo", json={"text": "third"})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
            assert refused.json()["error"]["code"] == "overloaded"
            assert httpx.get(server.rest_url + "/healthz").status_code == 200, "probes pass at the limit"
            assert [f.result().status_code for f in slow] == [200, 200]

            grpc_calls = [pool.submit(say, server.grpc_target, {"text": str(i), "delay": 0.8}) for i in range(2)]
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as exhausted:
                say(server.grpc_target, {"text": "third"})
            assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert [f.result() for f in grpc_calls] == [b"0", b"1"]


def _slow_upload(port: int, declared: int, sent: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (f"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {declared}\r\n\r\n")
        sock.sendall(head.encode() + sent)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_body_that_trickles_in_gets_408_and_frees_its_slot():
    settings = EchoSettings(log_level="warning", body_timeout_s=0.5, max_concurrency=1)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        started = time.monotonic()
        answer = _slow_upload(settings.rest_port, 100, b'{"text": ')  # then nothing more
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
        assert time.monotonic() - started < 5
        assert httpx.post(server.rest_url + "/v1/echo", json={"text": "next"}).json() == {"echo": "next"}


def test_random_paths_do_not_grow_the_metrics():
    settings = EchoSettings(log_level="warning")
    server = ServerThread(lambda: [create_service(settings)], settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELSERVE_API_KEYS", KEY)
        server.start()
    try:
        for i in range(30):
            httpx.get(f"{server.rest_url}/probe-{i}/x")  # refused 401 before routing
        text = httpx.get(server.rest_url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    finally:
        server.stop()
    assert "probe-" not in text
    assert 'route="unmatched",status="401"' in text


def test_liveness_fails_while_a_batch_makes_no_progress_and_recovers():
    settings = EchoSettings(log_level="warning", liveness_stall_s=0.4, max_wait_ms=0)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            beating = pool.submit(httpx.post, server.rest_url + "/v1/echo",
                                  json={"text": "steps", "delay": 1.0, "stepwise": True}, timeout=10)
            time.sleep(0.8)
            assert httpx.get(server.rest_url + "/healthz").status_code == 200, "a loop that checks is alive"
            assert beating.result().status_code == 200
            wedged = pool.submit(httpx.post, server.rest_url + "/v1/echo", json={"text": "wedged", "delay": 1.2},
                                 timeout=10)
            time.sleep(0.8)
            stalled = httpx.get(server.rest_url + "/healthz")
            assert stalled.status_code == 503 and "echo.echo" in stalled.json()["batchers"]
            assert wedged.result().status_code == 200
        assert httpx.get(server.rest_url + "/healthz").status_code == 200


def test_sigterm_refuses_new_work_at_once_and_answers_the_running_batch():
    process, url = _start_echo_process(ECHO_SHUTDOWN_GRACE_S="10", ECHO_MAX_WAIT_MS="0")
    try:
        _wait_for(url + "/readyz", 200)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            in_flight = pool.submit(httpx.post, url + "/v1/echo", json={"text": "slow", "delay": 1.5}, timeout=20)
            time.sleep(0.4)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            late = httpx.post(url + "/v1/echo", json={"text": "late"})
            assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"]
            assert "retry-after" in late.headers
            assert in_flight.result().json() == {"echo": "slow"}
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_batch_longer_than_the_grace_is_answered_503_not_dropped_and_exit_is_bounded():
    process, url = _start_echo_process(ECHO_SHUTDOWN_GRACE_S="0.5", ECHO_MAX_WAIT_MS="0")
    try:
        _wait_for(url + "/readyz", 200)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, url + "/v1/echo",
                                    json={"text": "long", "delay": 20, "stepwise": True}, timeout=30)
            time.sleep(0.4)
            stopped_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        assert answer.status_code == 503 and "shutting down" in answer.json()["error"]["message"]
        assert process.wait(timeout=20) == 0
        from services.kit.server import CLOSE_S

        assert time.monotonic() - stopped_at < 0.5 + CLOSE_S + 1.5
    finally:
        if process.poll() is None:
            process.kill()
