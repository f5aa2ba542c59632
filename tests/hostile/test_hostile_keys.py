"""Keys fail closed: a configured key file that is emptied, deleted or unreadable while serving keeps its last
good keys (or refuses everyone if it never held one); one Authorization per request; request ids that are
safe to echo and log. In-process echo servers: the attacks are on the kit, not on a model."""

import json
import logging
import socket
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

import services.kit.auth as auth
from services.kit import logs
from services.kit.testing import ServerThread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kit"))
from echo_service import GRPC_METHOD, EchoSettings, create_service  # noqa: E402

KEY = "sk-good-0123456789"
NEW_KEY = "sk-rotated-9876543210"


class Collected(logging.Handler):
    """Records of one logger, whatever the server's own logging setup does to the root logger."""

    def __init__(self, logger_name: str):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(logger_name)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "Collected":
        self.saved_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.saved_level)

    def wait_for(self, count: int, accept) -> list[logging.LogRecord]:
        """The first `count` accepted records: the access line may be written just after the client's answer."""
        deadline = time.monotonic() + 30
        while len(found := [r for r in self.records if accept(r)]) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return found


def keyed_server(monkeypatch, **env: str) -> ServerThread:
    settings = EchoSettings(log_level="warning", max_wait_ms=0)
    server = ServerThread(lambda: [create_service(settings)], settings)
    with monkeypatch.context() as patch:  # keys are read at start-up
        for name in (auth.KEYS_ENV, auth.KEYS_FILE_ENV, auth.ADMIN_KEYS_ENV, auth.ADMIN_KEYS_FILE_ENV):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        server.start()
    return server


def rest_status(server: ServerThread, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.rest_url + "/v1/echo", json={"text": "hi"}, headers=headers, timeout=30).status_code


def grpc_code(server: ServerThread, metadata=()) -> grpc.StatusCode:
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            channel.unary_unary(GRPC_METHOD)(json.dumps({"text": "hi"}).encode(), metadata=list(metadata), timeout=30)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def break_by_emptying(path: Path) -> None:
    path.write_text("")


def break_by_comments(path: Path) -> None:
    path.write_text("# every key revoked\n\n   \n# see the runbook\n")


def break_by_deleting(path: Path) -> None:
    path.unlink()


def break_by_unreadable(path: Path) -> None:
    # Root reads any mode, so the path becomes a directory (as a half-mounted volume can be).
    path.unlink()
    path.mkdir()


def break_by_garbage(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\x00garbage that is not UTF-8\n")


@pytest.mark.parametrize(
    "break_file",
    [break_by_emptying, break_by_comments, break_by_deleting, break_by_unreadable, break_by_garbage],
    ids=["emptied", "comments-only", "deleted", "unreadable", "not-utf8"],
)
def test_a_key_file_that_loses_its_keys_keeps_the_last_good_ones(tmp_path, monkeypatch, break_file):
    monkeypatch.setattr(auth, "FILE_CHECK_S", 0.0)
    key_file = tmp_path / "api-keys"
    key_file.write_text(f"{KEY}\n")
    with Collected("services.kit.auth") as auth_log:
        server = keyed_server(monkeypatch, **{auth.KEYS_FILE_ENV: str(key_file)})
        try:
            assert rest_status(server) == 401 and rest_status(server, KEY) == 200
            break_file(key_file)
            for _ in range(3):
                assert rest_status(server) == 401, "a request without a key got in"
                assert rest_status(server, "sk-guess") == 401
                assert rest_status(server, KEY) == 200, "the last good key stopped working"
                assert grpc_code(server) == grpc.StatusCode.UNAUTHENTICATED
                assert grpc_code(server, bearer(KEY)) == grpc.StatusCode.OK
            errors = [r.getMessage() for r in auth_log.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1, f"one error per change of state, not per request: {errors}"
            assert str(key_file) in errors[0] and "keeping the 1 keys" in errors[0]

            # Rotation to a new non-empty file still works, and clears the error state.
            if key_file.is_dir():
                key_file.rmdir()
            key_file.write_text(f"# rotated\n{NEW_KEY}\n")
            assert rest_status(server, NEW_KEY) == 200
            assert rest_status(server, KEY) == 401
            assert grpc_code(server, bearer(NEW_KEY)) == grpc.StatusCode.OK
            assert rest_status(server) == 401
        finally:
            server.stop()


@pytest.mark.parametrize("content", [None, "", "# keys come later\n"], ids=["missing", "empty", "comments-only"])
def test_a_configured_key_file_that_never_held_a_key_refuses_everyone(tmp_path, monkeypatch, content):
    key_file = tmp_path / "api-keys"
    if content is not None:
        key_file.write_text(content)
    with Collected("services.kit.auth") as auth_log:
        server = keyed_server(monkeypatch, **{auth.KEYS_FILE_ENV: str(key_file)})
        try:
            for key in (None, "", "anything", KEY):
                assert rest_status(server, key) == 401, key
            assert grpc_code(server) == grpc.StatusCode.UNAUTHENTICATED
            assert grpc_code(server, bearer(KEY)) == grpc.StatusCode.UNAUTHENTICATED
            assert httpx.get(server.rest_url + "/healthz", timeout=30).status_code == 200, "probes stay open"
        finally:
            server.stop()
    assert any(r.levelno >= logging.ERROR and str(key_file) in r.getMessage() for r in auth_log.records)


@pytest.fixture(scope="module")
def static_keys_server():
    with pytest.MonkeyPatch.context() as patch:
        server = keyed_server(patch, **{auth.KEYS_ENV: f"other-key,{KEY}"})
    yield server
    server.stop()


@pytest.mark.parametrize("order", ["good-first", "good-last"])
def test_two_authorization_headers_are_refused(static_keys_server, order):
    pair = [("Authorization", f"Bearer {KEY}"), ("Authorization", "Bearer sk-checked-by-the-proxy")]
    headers = pair if order == "good-first" else pair[::-1]
    response = httpx.post(static_keys_server.rest_url + "/v1/echo", json={"text": "hi"}, headers=headers, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "authorization"
    assert "more than one Authorization header" in response.json()["error"]["message"]

    metadata = [("authorization", value) for _, value in headers]
    with grpc.insecure_channel(static_keys_server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(GRPC_METHOD)(json.dumps({"text": "hi"}).encode(), metadata=metadata, timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "more than one 'authorization'" in refused.value.details()


def test_a_repeated_authorization_header_is_ignored_when_keys_are_off(monkeypatch):
    """Nothing reads the header then, so nothing can be confused by it."""
    server = keyed_server(monkeypatch)
    try:
        headers = [("Authorization", "Bearer a"), ("Authorization", "Bearer b")]
        response = httpx.post(server.rest_url + "/v1/echo", json={"text": "hi"}, headers=headers, timeout=30)
        assert response.status_code == 200
    finally:
        server.stop()


def raw_request_id_echo(server: ServerThread, request_id: bytes) -> bytes | None:
    """The x-request-id a raw HTTP/1.1 request gets back (clients refuse to send control characters), or None
    when the HTTP parser itself refused the header (400, before any application code)."""
    host, port = server.rest_url.removeprefix("http://").split(":")
    body = b'{"text": "hi"}'
    request = (
        b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Authorization: Bearer " + KEY.encode() + b"\r\n"
        + b"X-Request-Id: " + request_id + b"\r\n"
        + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0]
    if head.startswith(b"HTTP/1.1 400") and b"x-request-id" not in head.lower():
        return None
    assert head.startswith(b"HTTP/1.1 200"), head
    (echoed,) = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"x-request-id:")]
    return echoed


@pytest.mark.parametrize(
    "sent",
    [b"\x1b[31mFORGED status=200\x1b[0m", b"abc\x01def", b"r" * 1000],
    ids=["escape", "control", "1000-chars"],
)
def test_a_hostile_request_id_is_replaced_in_the_response_and_the_log(static_keys_server, sent):
    with Collected(logs.ACCESS_LOGGER) as access:
        echoed = raw_request_id_echo(static_keys_server, sent)
        if echoed is None:
            assert any(byte < 0x20 for byte in sent), "the HTTP parser refused a printable id"
            return  # refused by the HTTP parser: nothing echoed or logged
        (line,) = access.wait_for(1, lambda r: r.fields["route"] == "/v1/echo")
    assert echoed != sent and len(echoed) <= logs.MAX_REQUEST_ID
    assert all(0x21 <= byte <= 0x7E for byte in echoed)
    assert line.fields["request_id"] == echoed.decode()
    assert "\x1b" not in logs.TextFormatter().format(line) and "\x01" not in logs.JsonFormatter().format(line)


def test_a_clean_request_id_is_kept_and_a_long_grpc_one_replaced(static_keys_server):
    assert raw_request_id_echo(static_keys_server, b"trace-42/abc") == b"trace-42/abc"
    with Collected(logs.ACCESS_LOGGER) as access:
        assert grpc_code(static_keys_server, bearer(KEY) + [("x-request-id", "g" * 1000)]) == grpc.StatusCode.OK
        assert grpc_code(static_keys_server, bearer(KEY) + [("x-request-id", "grpc-7")]) == grpc.StatusCode.OK
        ids = [r.fields["request_id"] for r in access.wait_for(2, lambda r: r.fields["protocol"] == "grpc")]
    assert len(ids) == 2 and ids[1] == "grpc-7"
    assert len(ids[0]) <= logs.MAX_REQUEST_ID and "g" * 100 not in ids[0]
