"""The retry policy against real local servers that answer with scripted statuses.

An HTTP server (http.server on loopback) and a gRPC server each answer from a script, e.g.
"503 with Retry-After: 1, then 200"; the tests check what the client sent, how long it waited and
which typed error it raised.
"""

import json
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from clients.errors import (
    ConnectionFailedError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    ServerError,
    UnavailableError,
    parse_retry_after,
)
from clients.grpc_channel import GrpcCaller
from clients.rest import AsyncRestTransport, RestTransport
from clients.retry import RetryPolicy
from protos import translation_pb2 as pb
from protos import translation_pb2_grpc as pb_grpc
from services.kit.testing import free_port

FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


class ScriptedHTTPServer:
    """Answers POST/GET with the next (status, headers, body) of its script; repeats the last one."""

    def __init__(self):
        self.script: list[tuple[int, dict, dict]] = []
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                outer.requests.append(
                    {
                        "at": time.monotonic(),
                        "path": self.path,
                        "body": self.rfile.read(length),
                        "request_id": self.headers.get("x-request-id"),
                    }
                )
                index = min(len(outer.requests), len(outer.script)) - 1
                status, headers, body = outer.script[index]
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset(self, *script):
        self.script = list(script)
        self.requests = []


@pytest.fixture(scope="module")
def http_server():
    server = ScriptedHTTPServer()
    yield server
    server.httpd.shutdown()


def error(code: str, message: str, param: str | None = None) -> dict:
    body = {"code": code, "message": message, "type": code}
    return {"error": body | ({"param": param} if param else {})}


OK = (200, {}, {"answer": 42})


def test_503_with_retry_after_is_retried_after_the_servers_delay(http_server):
    http_server.reset((503, {"Retry-After": "1"}, error("overloaded", "queue full")), OK)
    with RestTransport(http_server.url, retry=FAST) as transport:
        response = transport.request("POST", "/v1/thing", json={"x": 1})
    assert response.json() == {"answer": 42}
    first, second = http_server.requests
    assert second["at"] - first["at"] >= 0.95  # Retry-After beat the 10 ms backoff
    assert first["body"] == second["body"] == b'{"x":1}'
    assert first["request_id"] == second["request_id"] is not None  # one logical request


def test_429_is_retried_and_gives_up_after_max_attempts(http_server):
    http_server.reset((429, {}, error("rate_limited", "slow down")))
    with RestTransport(http_server.url, retry=FAST) as transport, pytest.raises(OverloadedError) as caught:
        transport.request("GET", "/v1/thing")
    assert len(http_server.requests) == FAST.max_attempts
    assert caught.value.status == 429 and caught.value.message == "slow down"


def test_400_is_not_retried_and_carries_the_servers_error(http_server):
    http_server.reset((400, {}, error("invalid_argument", "text[0]: must not be empty", "text")), OK)
    with (
        RestTransport(http_server.url, retry=FAST) as transport,
        pytest.raises(InvalidRequestError) as caught,
    ):
        transport.request("POST", "/v1/translate", json={"text": ""})
    assert len(http_server.requests) == 1
    err = caught.value
    assert (err.status, err.code, err.param) == (400, "invalid_argument", "text")
    assert err.message == "text[0]: must not be empty"
    assert str(err) == "400 invalid_argument: text[0]: must not be empty"


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (404, {"error": "Servable not found for request: Latest(nope)"}, NotFoundError),  # TF Serving's shape
        (500, error("internal", "boom"), ServerError),
        (504, error("deadline_exceeded", "too slow"), DeadlineExceededError),
    ],
)
def test_other_errors_are_final_and_typed(http_server, status, body, expected):
    http_server.reset((status, {}, body), OK)
    with RestTransport(http_server.url, retry=FAST) as transport, pytest.raises(expected) as caught:
        transport.request("GET", "/v1/thing")
    assert len(http_server.requests) == 1
    assert caught.value.message in json.dumps(body)


def test_retry_after_longer_than_the_limit_is_not_waited_for(http_server):
    http_server.reset((503, {"Retry-After": "3600"}, error("unavailable", "draining")), OK)
    policy = RetryPolicy(max_attempts=4, max_retry_after_s=5)
    started = time.monotonic()
    with RestTransport(http_server.url, retry=policy) as transport, pytest.raises(UnavailableError) as caught:
        transport.request("GET", "/v1/thing")
    assert time.monotonic() - started < 1 and len(http_server.requests) == 1
    assert caught.value.retry_after == 3600


async def test_async_transport_retries_the_same_way(http_server):
    http_server.reset((503, {"Retry-After": "1"}, error("overloaded", "queue full")), OK)
    async with AsyncRestTransport(http_server.url, retry=FAST) as transport:
        response = await transport.request("POST", "/v1/thing", json={"x": 1})
    assert response.json() == {"answer": 42}
    assert http_server.requests[1]["at"] - http_server.requests[0]["at"] >= 0.95

    http_server.reset((400, {}, error("invalid_argument", "bad")), OK)
    async with AsyncRestTransport(http_server.url, retry=FAST) as transport:
        with pytest.raises(InvalidRequestError):
            await transport.request("POST", "/v1/thing", json={})
    assert len(http_server.requests) == 1


def test_connection_refused_is_retried_then_raised():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with RestTransport(url, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.1)) as transport:
        with pytest.raises(ConnectionFailedError, match="cannot connect"):
            transport.request("GET", "/v1/models")
    assert time.monotonic() - started >= 0.2  # two backoffs of ~0.1 and ~0.2 s


def test_client_timeout_is_a_deadline_error():
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(1)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with RestTransport(
            f"http://127.0.0.1:{httpd.server_address[1]}", timeout=0.2, retry=FAST
        ) as transport:
            with pytest.raises(DeadlineExceededError, match="client timeout"):
                transport.request("GET", "/")
    finally:
        httpd.shutdown()


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# -- gRPC ---------------------------------------------------------------------------------------


class ScriptedTranslation(pb_grpc.TranslationServicer):
    """Fails with the scripted status codes (with retry-after trailing metadata), then answers."""

    def __init__(self):
        self.script: list[grpc.StatusCode | None] = []
        self.calls: list[float] = []

    def Translate(self, request, context):
        self.calls.append(time.monotonic())
        code = self.script[min(len(self.calls), len(self.script)) - 1]
        if code is not None:
            context.set_trailing_metadata((("retry-after", "1"),))
            context.abort(code, f"scripted {code.name}")
        return pb.TranslateResponse(translations=[t.upper() for t in request.text], model="scripted")


@pytest.fixture(scope="module")
def grpc_server():
    servicer = ScriptedTranslation()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_TranslationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_grpc_retries_unavailable_and_exhausted_honouring_retry_after(grpc_server, code):
    servicer, target = grpc_server
    servicer.script, servicer.calls = [code, None], []
    with GrpcCaller(target, retry=FAST) as caller:
        stub = pb_grpc.TranslationStub(caller.channel)
        response = caller.unary(stub.Translate, pb.TranslateRequest(text=["hi"]))
    assert list(response.translations) == ["HI"]
    assert len(servicer.calls) == 2 and servicer.calls[1] - servicer.calls[0] >= 0.95


def test_grpc_invalid_argument_is_not_retried(grpc_server):
    servicer, target = grpc_server
    servicer.script, servicer.calls = [grpc.StatusCode.INVALID_ARGUMENT, None], []
    with GrpcCaller(target, retry=FAST) as caller, pytest.raises(InvalidRequestError) as caught:
        caller.unary(pb_grpc.TranslationStub(caller.channel).Translate, pb.TranslateRequest(text=["hi"]))
    assert len(servicer.calls) == 1
    assert caught.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == "scripted INVALID_ARGUMENT"


def test_grpc_connection_refused_raises_unavailable_after_retries():
    with GrpcCaller(f"127.0.0.1:{free_port()}", retry=FAST, timeout=5) as caller:
        with pytest.raises(UnavailableError):
            caller.unary(pb_grpc.TranslationStub(caller.channel).Translate, pb.TranslateRequest(text=["hi"]))
