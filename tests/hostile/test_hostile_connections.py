"""Slow and idle clients against the kit's servers: they must not take a port from the probes or from work.

Before: 168 connections that each sent `GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: ` and stopped made every
REST request, /healthz included, a 503 for as long as they stayed open (uvicorn's limit_concurrency counted
them, and nothing timed out a request head); 132 grpc.health.v1.Health/Watch streams without a key made every
RPC, Health/Check included, RESOURCE_EXHAUSTED (grpc's maximum_concurrent_rpcs counted them, forever).
"""

import json
import resource
import select
import socket
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit.testing import ServerThread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kit"))
from echo_service import GRPC_METHOD, EchoSettings, create_service  # noqa: E402

SLOWLORIS = 1000
HALF_SENT_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
# What a test waits at most for something the server must do by itself (closing a connection): the bad old
# behaviour waits forever, the server under test within a second or two even on a loaded machine.
CAP_S = 60
KEY = "connections-test-key"


def open_file_room(needed: int) -> None:
    """The test holds both ends of every connection in one process: raise the soft open-file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the open-file hard limit {hard} is below the {needed} this test needs")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def half_sent(port: int, count: int, head: bytes = HALF_SENT_HEAD) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=CAP_S)
        if head:
            sock.sendall(head)
        sockets.append(sock)
    return sockets


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither closed the connection nor answered on it."""
    return not readable(sock, 0)


def readable(sock: socket.socket, timeout_s: float) -> bool:
    """select.poll, not select.select: the descriptors of 1,000 connections go beyond select's 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def read_until_closed(sock: socket.socket, trickle: bytes = b"") -> bytes | None:
    """Everything the server sends until it closes the connection (sending `trickle` a byte at a time
    meanwhile), or None when it has not closed it within CAP_S."""
    received = b""
    deadline = time.monotonic() + CAP_S
    while time.monotonic() < deadline:
        if readable(sock, 0.2):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
        elif trickle:
            try:
                sock.sendall(trickle[:1])
            except (BrokenPipeError, ConnectionResetError):
                return received
            trickle = trickle[1:] or trickle
    return None


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


@pytest.fixture
def echo_server(request):
    """An echo service of its own with the given settings (indirect parametrization or defaults)."""
    settings = EchoSettings(log_level="warning", max_wait_ms=0, shutdown_grace_s=1, **getattr(request, "param", {}))
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        yield server


@pytest.mark.parametrize("echo_server", [dict(max_concurrency=8, header_timeout_s=CAP_S)], indirect=True)
def test_probes_and_work_answer_while_1000_slowloris_connections_are_open(echo_server):
    open_file_room(3 * SLOWLORIS)
    attackers = half_sent(echo_server.settings.rest_port, SLOWLORIS)
    try:
        assert httpx.get(echo_server.rest_url + "/healthz", timeout=CAP_S).status_code == 200
        assert httpx.get(echo_server.rest_url + "/readyz", timeout=CAP_S).status_code == 200
        work = httpx.post(echo_server.rest_url + "/v1/echo", json={"text": "through"}, timeout=CAP_S)
        assert work.status_code == 200 and work.json() == {"echo": "through"}
        # They were open all along: the probes got through beside them, not after them.
        assert all(still_open(sock) for sock in attackers[:20] + attackers[-20:])
    finally:
        close_all(attackers)


def complete_request_then(head: bytes) -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + head


@pytest.mark.parametrize("echo_server", [dict(header_timeout_s=1)], indirect=True)
@pytest.mark.parametrize(
    "sent, trickle, answer",
    [
        (HALF_SENT_HEAD, b"", b"HTTP/1.1 408"),  # half a head, then nothing
        (b"", b"", b""),  # a connection that never sends a byte
        (HALF_SENT_HEAD, b"abcdefgh", b"HTTP/1.1 408"),  # a head that keeps coming, a byte at a time
        (complete_request_then(HALF_SENT_HEAD), b"", b"HTTP/1.1 200"),  # half a second head after keep-alive
    ],
    ids=["half-sent", "silent", "trickling", "half-sent-after-keep-alive"],
)
def test_a_connection_without_a_complete_request_head_is_closed_after_the_header_timeout(
    echo_server, sent, trickle, answer
):
    with socket.create_connection(("127.0.0.1", echo_server.settings.rest_port), timeout=CAP_S) as sock:
        sock.sendall(sent)
        received = read_until_closed(sock, trickle)
    assert received is not None, "the server kept the connection open"
    assert received.startswith(answer)
    if sent.endswith(HALF_SENT_HEAD):
        assert b'"code": "request_timeout"' in received and b"request head not complete within 1 s" in received
    assert httpx.get(echo_server.rest_url + "/healthz", timeout=CAP_S).status_code == 200


@pytest.mark.parametrize("echo_server", [dict(max_connections=20, header_timeout_s=CAP_S)], indirect=True)
def test_beyond_max_connections_the_longest_waiting_idle_ones_are_closed_and_probes_get_in(echo_server):
    oldest = half_sent(echo_server.settings.rest_port, 20)
    newest = half_sent(echo_server.settings.rest_port, 20)
    try:
        assert httpx.get(echo_server.rest_url + "/healthz", timeout=CAP_S).status_code == 200
        assert all(read_until_closed(sock) is not None for sock in oldest), "made room by closing the oldest"
        assert sum(still_open(sock) for sock in newest) >= 18, "only as many closed as the bound needs"
    finally:
        close_all(oldest + newest)


def slow_echo(port: int) -> socket.socket:
    body = json.dumps({"text": "slow", "delay": 30, "stepwise": True}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=CAP_S)
    sock.sendall(
        b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    return sock


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + CAP_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.parametrize("echo_server", [dict(max_connections=3, header_timeout_s=CAP_S)], indirect=True)
def test_when_every_connection_serves_a_request_a_new_one_is_closed_unanswered(echo_server):
    busy = [slow_echo(echo_server.settings.rest_port) for _ in range(3)]
    try:
        wait_for(lambda: echo_server.state.inflight == 3, "the slow requests did not start")
        with socket.create_connection(("127.0.0.1", echo_server.settings.rest_port), timeout=CAP_S) as extra:
            try:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert read_until_closed(extra) == b"", "closed without an answer"
    finally:
        close_all(busy)


def watch_streams(target: str, count: int) -> tuple[list, list[grpc.RpcError]]:
    """`count` Health/Watch streams without metadata, as anyone can open: (those open, those refused)."""
    channel = grpc.insecure_channel(target)
    stub = health_pb2_grpc.HealthStub(channel)
    opened, refused = [], []
    for _ in range(count):
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=CAP_S)
        try:
            next(stream)  # the current status: the stream is open
            opened.append(stream)
        except grpc.RpcError as error:
            refused.append(error)
    return opened, refused


def say(target: str, text: str, key: str | None = None, timeout: float = CAP_S) -> bytes:
    with grpc.insecure_channel(target) as channel:
        metadata = (("authorization", f"Bearer {key}"),) if key else None
        return channel.unary_unary(GRPC_METHOD)(json.dumps({"text": text}).encode(), timeout=timeout, metadata=metadata)


def health_check(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CAP_S).status


@pytest.mark.parametrize("keys", [False, True], ids=["keys-off", "keys-on"])
def test_health_watch_streams_cannot_take_the_slots_of_checks_and_work(keys, monkeypatch):
    if keys:
        monkeypatch.setenv("MODELSERVE_API_KEYS", KEY)
    settings = EchoSettings(log_level="warning", max_wait_ms=0, shutdown_grace_s=1, max_concurrency=4,
                            grpc_max_health_watches=4)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        opened, refused = watch_streams(server.grpc_target, 12)
        try:
            assert len(opened) == 4 and len(refused) == 8
            assert {error.code() for error in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert health_check(server.grpc_target) == health_pb2.HealthCheckResponse.SERVING
            assert say(server.grpc_target, "work", key=KEY if keys else None) == b"work"
        finally:
            for stream in opened:
                stream.cancel()

        def watch_admitted_again() -> bool:
            admitted, _ = watch_streams(server.grpc_target, 1)
            for stream in admitted:
                stream.cancel()
            return bool(admitted)

        wait_for(watch_admitted_again, "closed Watch streams did not give their places back")


def test_grpc_work_at_its_limit_leaves_health_checks_answering():
    settings = EchoSettings(log_level="warning", max_wait_ms=0, shutdown_grace_s=1, max_concurrency=2)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        channel = grpc.insecure_channel(server.grpc_target)
        slow = channel.unary_unary(GRPC_METHOD)
        body = json.dumps({"text": "slow", "delay": 30, "stepwise": True}).encode()
        calls = [slow.future(body, timeout=CAP_S) for _ in range(2)]
        try:
            wait_for(lambda: server.state.inflight == 2, "the slow RPCs did not start")
            assert health_check(server.grpc_target) == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as refused:
                say(server.grpc_target, "third")
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            for call in calls:
                call.cancel()
            channel.close()
        wait_for(lambda: server.state.inflight == 0, "the cancelled RPCs did not end")
        assert say(server.grpc_target, "after") == b"after", "the cancelled RPCs gave their slots back"


def test_grpc_refuses_connections_beyond_max_connections():
    settings = EchoSettings(log_level="warning", max_wait_ms=0, shutdown_grace_s=1, max_connections=2)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        # A subchannel pool of its own per channel: each channel is a connection of its own.
        channels = [grpc.insecure_channel(server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(3)]
        try:
            say_on = [channel.unary_unary(GRPC_METHOD) for channel in channels]
            assert [call(b'{"text": "in"}', timeout=CAP_S) for call in say_on[:2]] == [b"in", b"in"]
            with pytest.raises(grpc.RpcError) as refused:
                say_on[2](b'{"text": "third"}', timeout=CAP_S)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            for channel in channels:
                channel.close()
