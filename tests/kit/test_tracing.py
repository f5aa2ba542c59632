"""OpenTelemetry traces: one tree per request (server -> queue, batch -> model) over REST and gRPC, the caller's
traceparent continued, clients passing their context on, and tracing off unless an endpoint is configured."""

import asyncio
import concurrent.futures
import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from clients.grpc_channel import GrpcCaller
from clients.rest import RestTransport
from services.kit import logs
from services.kit.batcher import DynamicBatcher
from services.kit.errors import DeadlineExceeded
from services.kit.testing import ServerThread

sys.path.insert(0, str(Path(__file__).parent))
from echo_process import EchoProcess  # noqa: E402
from echo_service import GRPC_METHOD, EchoSettings, create_service  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"


@pytest.fixture(scope="module")
def exporter():
    """An SDK provider recording into memory for this module, then tracing off again for the other tests."""
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    yield memory
    provider.shutdown()
    # What opentelemetry's own test utilities do to undo set_tracer_provider (it refuses a second call).
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE._done = False


@pytest.fixture(scope="module")
def server(exporter):
    settings = EchoSettings(log_level="warning", max_wait_ms=0, max_batch_size=8)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture
def spans(exporter):
    exporter.clear()
    return exporter


def trace_of(exporter: InMemorySpanExporter, trace_id: int, count: int = 4, timeout: float = 5.0) -> dict:
    """The finished spans of one trace by name (the server span ends just after the response is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [span for span in exporter.get_finished_spans() if span.context.trace_id == trace_id]
        if len(found) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(found) == count, [span.name for span in found]
    return {span.name: span for span in found}


def assert_request_tree(tree: dict, server_name: str) -> None:
    server, queue, batch, model = tree[server_name], tree["queue"], tree["batch"], tree["model"]
    assert server.kind is SpanKind.SERVER
    assert queue.parent.span_id == server.context.span_id
    assert batch.parent.span_id == server.context.span_id
    assert model.parent.span_id == batch.context.span_id
    # Queue time comes before the batch; the model call lies within the batch, the batch within the request.
    assert server.start_time <= queue.start_time <= queue.end_time <= batch.start_time
    assert batch.start_time <= model.start_time <= model.end_time <= batch.end_time <= server.end_time
    assert batch.attributes["modelserve.batcher"] == "echo.echo"


def render(tree: dict, root: str) -> str:
    """The tree as text, for reading a failure (and the sample in the docs)."""
    children = {}
    for span in tree.values():
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    lines = []

    def walk(span, depth):
        lasted = (span.end_time - span.start_time) / 1e6
        attributes = ", ".join(f"{k}={v}" for k, v in span.attributes.items())
        lines.append(f"{'  ' * depth}{span.name} [{span.kind.name}] {lasted:.2f} ms {attributes}")
        for child in sorted(children.get(span.context.span_id, []), key=lambda s: s.start_time):
            walk(child, depth + 1)

    walk(tree[root], 0)
    return "\n".join(lines)


def test_rest_request_gives_one_tree_continuing_the_callers_trace(server, spans):
    response = httpx.post(
        server.rest_url + "/v1/echo", json={"text": "hi", "delay": 0.02}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200
    tree = trace_of(spans, int(CALLER_TRACE_ID, 16))
    print(render(tree, "POST /v1/echo"))
    assert_request_tree(tree, "POST /v1/echo")
    server_span = tree["POST /v1/echo"]
    assert server_span.parent.span_id == int(CALLER_SPAN_ID, 16) and server_span.parent.is_remote
    assert server_span.attributes["http.route"] == "/v1/echo"
    assert server_span.attributes["http.request.method"] == "POST"
    assert server_span.attributes["http.response.status_code"] == 200
    assert server_span.attributes["modelserve.request_id"] == response.headers["x-request-id"]
    assert tree["batch"].attributes["modelserve.batch.size"] == 1
    assert tree["batch"].attributes["modelserve.batch.position"] == 0
    assert tree["model"].end_time - tree["model"].start_time >= 20_000_000  # the runner's 20 ms


def test_grpc_request_gives_one_tree_continuing_the_callers_trace(server, spans):
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = channel.unary_unary(GRPC_METHOD)(
            json.dumps({"text": "hi"}).encode(), metadata=(("traceparent", TRACEPARENT),), timeout=5
        )
    assert answer == b"hi"
    tree = trace_of(spans, int(CALLER_TRACE_ID, 16))
    print(render(tree, "echo.v1.Echo/Say"))
    assert_request_tree(tree, "echo.v1.Echo/Say")
    server_span = tree["echo.v1.Echo/Say"]
    assert server_span.parent.span_id == int(CALLER_SPAN_ID, 16)
    assert server_span.attributes["rpc.system"] == "grpc"
    assert server_span.attributes["rpc.service"] == "echo.v1.Echo"
    assert server_span.attributes["rpc.method"] == "Say"
    assert server_span.attributes["rpc.grpc.status_code"] == 0


def test_a_request_without_traceparent_starts_its_own_trace_named_by_the_route_template(server, spans):
    httpx.post(server.rest_url + "/v1/echo", json={"text": "a"})
    httpx.get(server.rest_url + "/v1/nothing/12345")
    deadline = time.monotonic() + 5
    while len([s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    servers = {span.name: span for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER}
    assert set(servers) == {"POST /v1/echo", "GET unmatched"}  # never the raw path in the name
    assert servers["POST /v1/echo"].parent is None
    assert servers["POST /v1/echo"].context.trace_id != servers["GET unmatched"].context.trace_id
    assert servers["GET unmatched"].attributes["http.response.status_code"] == 404


def test_each_request_of_a_batch_keeps_its_own_trace_with_a_shared_batch_id(server, spans):
    def post(text, delay=0.0):
        return httpx.post(server.rest_url + "/v1/echo", json={"text": text, "delay": delay}, timeout=10)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        blocker = pool.submit(post, "blocker", 0.5)  # holds the model while the others queue up
        time.sleep(0.2)
        batched = [pool.submit(post, text) for text in "abc"]
        assert blocker.result().status_code == 200 and all(f.result().status_code == 200 for f in batched)
    trace_ids = {span.context.trace_id for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER}
    batch_spans = []
    for trace_id in trace_ids:
        tree = trace_of(spans, trace_id)
        assert_request_tree(tree, "POST /v1/echo")
        batch_spans.append(tree["batch"])
    shared = [span for span in batch_spans if span.attributes["modelserve.batch.size"] == 3]
    assert len(shared) == 3
    assert len({span.attributes["modelserve.batch.id"] for span in shared}) == 1
    assert sorted(span.attributes["modelserve.batch.position"] for span in shared) == [0, 1, 2]
    blocked = [span for span in batch_spans if span.attributes["modelserve.batch.size"] == 1]
    assert blocked[0].attributes["modelserve.batch.id"] != shared[0].attributes["modelserve.batch.id"]


def test_failures_mark_the_model_and_server_spans(server, spans):
    response = httpx.post(server.rest_url + "/v1/echo", json={"text": "x", "fail": "crash"})
    assert response.status_code == 500
    server_span = next(s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER)
    tree = trace_of(spans, server_span.context.trace_id)
    assert tree["model"].status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in tree["model"].events)
    assert tree["POST /v1/echo"].status.status_code is StatusCode.ERROR


def test_clients_pass_the_current_trace_on(server, spans):
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller, RestTransport(server.rest_url) as transport:
        transport.request("POST", "/v1/echo", json={"text": "from the client"})
    with tracer.start_as_current_span("grpc caller") as grpc_caller, GrpcCaller(server.grpc_target) as client:
        assert client.unary(client.channel.unary_unary(GRPC_METHOD), json.dumps({"text": "hi"}).encode()) == b"hi"
    rest_tree = trace_of(spans, caller.get_span_context().trace_id, count=5)
    assert rest_tree["POST /v1/echo"].parent.span_id == caller.get_span_context().span_id
    grpc_tree = trace_of(spans, grpc_caller.get_span_context().trace_id, count=5)
    assert grpc_tree["echo.v1.Echo/Say"].parent.span_id == grpc_caller.get_span_context().span_id


def test_access_lines_carry_the_trace_id(server, spans):
    lines = []
    handler = logging_handler(lines)
    logs.access_log.addHandler(handler)
    logs.access_log.setLevel("INFO")
    try:
        httpx.post(server.rest_url + "/v1/echo", json={"text": "hi"}, headers={"traceparent": TRACEPARENT})
        deadline = time.monotonic() + 5
        while not lines and time.monotonic() < deadline:  # written once the response has gone out
            time.sleep(0.01)
    finally:
        logs.access_log.removeHandler(handler)
        logs.access_log.setLevel("NOTSET")
    (line,) = lines
    assert line["trace_id"] == CALLER_TRACE_ID and line["route"] == "/v1/echo"


def logging_handler(lines: list) -> logging.Handler:
    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(json.loads(logs.JsonFormatter().format(record)))

    return Collect()


async def test_runners_annotate_their_requests_model_span(spans):
    def predict(works):
        for step in range(3):
            works[0].span.add_event("step", {"step": step})
        works[0].span.set_attribute("tokens", 7)
        return ["done"] * len(works)

    batcher = DynamicBatcher("unit", predict, max_wait_ms=0)
    with trace.get_tracer("test").start_as_current_span("request") as request:
        assert await batcher.submit("payload") == "done"
    await batcher.stop()
    tree = trace_of(spans, request.get_span_context().trace_id)
    assert [event.attributes["step"] for event in tree["model"].events] == [0, 1, 2]
    assert tree["model"].attributes["tokens"] == 7
    assert tree["queue"].parent.span_id == request.get_span_context().span_id


async def test_a_request_that_expires_in_the_queue_ends_its_queue_span(spans):
    release = threading.Event()

    def predict(works):
        release.wait(5)
        return ["done"] * len(works)

    batcher = DynamicBatcher("unit", predict, max_wait_ms=0, max_batch_size=1)
    first = asyncio.ensure_future(batcher.submit("first"))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit("second", timeout=0.1)
    release.set()
    await first
    await batcher.stop()
    queues = [span for span in spans.get_finished_spans() if span.name == "queue"]
    assert len(queues) == 2  # both ended: the expired one when it left, the other when its batch took it


class OtlpCollector:
    """A stand-in OpenTelemetry collector keeping the trace export requests it receives, over OTLP/HTTP
    (POST /v1/traces, protobuf) or OTLP/gRPC (TraceService/Export)."""

    def __init__(self, protocol: str):
        self.received: list[ExportTraceServiceRequest] = []
        received = self.received
        if protocol == "grpc":

            class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
                def Export(self, request, context):  # noqa: N802 - the generated name
                    received.append(request)
                    return ExportTraceServiceResponse()

            self.grpc_server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self.grpc_server)
            port = self.grpc_server.add_insecure_port("127.0.0.1:0")
            self.grpc_server.start()
            self.endpoint = f"http://127.0.0.1:{port}"
            self.http_server = None
            return

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
                received.append(request)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http_server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http_server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.http_server.server_port}"
        self.grpc_server = None

    def _spans(self):
        for request in list(self.received):
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        yield resource_spans.resource, span

    def names(self) -> set[str]:
        return {span.name for _, span in self._spans()}

    def trace_ids(self) -> set[str]:
        return {span.trace_id.hex() for _, span in self._spans()}

    def service_names(self) -> set[str]:
        return {a.value.string_value for resource, _ in self._spans() for a in resource.attributes if a.key == "service.name"}

    def stop(self) -> None:
        if self.http_server is not None:
            self.http_server.shutdown()
        if self.grpc_server is not None:
            self.grpc_server.stop(0)


def test_tracing_is_off_without_an_endpoint():
    code = (
        "import sys; from opentelemetry import trace; from services.kit import tracing; "
        "print(tracing.configure('echo'), type(trace.get_tracer_provider()).__name__, "
        "'opentelemetry.sdk' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "ProxyTracerProvider", "False"], result.stderr


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_an_otlp_endpoint_turns_tracing_on_and_spans_reach_the_collector(protocol):
    collector = OtlpCollector(protocol)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_SERVICE_NAME": "echo-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "ECHO_LOG_LEVEL": "warning",
    }
    try:
        with EchoProcess(env) as echo:
            for _ in range(3):
                httpx.post(echo.rest_url + "/v1/echo", json={"text": "hi"}, headers={"traceparent": TRACEPARENT})
            with grpc.insecure_channel(echo.grpc_target) as channel:
                channel.unary_unary(GRPC_METHOD)(b'{"text": "hi"}', metadata=(("traceparent", TRACEPARENT),))
            deadline = time.monotonic() + 10
            expected = {"POST /v1/echo", "echo.v1.Echo/Say", "queue", "batch", "model"}
            while time.monotonic() < deadline and not expected <= collector.names():
                time.sleep(0.05)
        assert {"POST /v1/echo", "echo.v1.Echo/Say", "queue", "batch", "model"} <= collector.names(), echo.stderr
        assert echo.stderr == ""  # no warning from the tracing path (the process logs warnings and worse)
        assert collector.trace_ids() == {CALLER_TRACE_ID}
        assert collector.service_names() == {"echo-under-test"}
    finally:
        collector.stop()
