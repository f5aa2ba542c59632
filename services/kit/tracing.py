"""OpenTelemetry traces, off unless an OTLP endpoint is configured.

Configured by the standard variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
turn tracing on, `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf` (the specification's default, port
4318) or `grpc` (port 4317), `OTEL_SERVICE_NAME` names the process (default: the service's name), and the
exporter reads its headers, timeout and compression variables itself. Without an endpoint no SDK provider
is installed and the kit starts no spans: a request costs one `enabled()` check per step.

One trace per request, continuing the caller's W3C `traceparent` (HTTP header or gRPC metadata):

    POST /v1/echo      server span: the route template (REST) or the method (gRPC)
    ├── queue          waiting in the batcher's queue
    └── batch          the request's place in one model call: batcher, batch id, size, position
        └── model      predict_batch in the model thread; runners add events and attributes here

A batch serves several requests, each in its own trace. Each request gets its own `batch` and `model`
spans (same times, same `modelserve.batch.id`) rather than one batch span that every trace links to: each
trace is then whole in any backend without following links, and a runner annotates one request's model
span (its draft rounds, its denoising steps) through `Work.span` without touching its neighbours'. The
batch id finds the other requests of a batch.
"""

import logging
import os

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, SpanKind, StatusCode

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")

_NOT_INSTALLED = (ProxyTracerProvider, NoOpTracerProvider)
_cached: tuple[trace.TracerProvider, trace.Tracer] | None = None


def _tracer() -> trace.Tracer:
    # Kept per provider rather than once: a provider installed later (or replaced in tests) takes effect.
    global _cached
    provider = trace.get_tracer_provider()
    if _cached is None or _cached[0] is not provider:
        _cached = (provider, provider.get_tracer("modelserve"))
    return _cached[1]


def enabled() -> bool:
    """True once an SDK tracer provider is installed (by `configure` or by whoever embeds the kit)."""
    return not isinstance(trace.get_tracer_provider(), _NOT_INSTALLED)


def configure(default_service_name: str) -> bool:
    """Install an OTLP-exporting tracer provider when an endpoint is configured; True if tracing is on.

    Once per process: a provider already installed is kept. Spans leave in batches from a background
    thread; the provider flushes them at interpreter exit.
    """
    if enabled():
        return True
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = next((os.environ[name] for name in PROTOCOL_VARIABLES if os.environ.get(name)), "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use grpc or http/protobuf")
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("tracing on: OTLP over %s as %s", protocol, resource.attributes[SERVICE_NAME])
    return True


def start_server_span(name: str, carrier: dict[str, str], attributes: dict) -> Span:
    """A server span continuing the trace context found in `carrier` (HTTP headers or gRPC metadata)."""
    return _tracer().start_span(name, context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attributes)


def _end(span: Span, result: object) -> None:
    if isinstance(result, BaseException):
        span.record_exception(result)
        span.set_status(StatusCode.ERROR, f"{type(result).__name__}: {result}")
    span.end()


class WorkSpans:
    """The spans of one request inside a batcher: `queue`, then `batch` with its `model` child.

    Created in the request's context (its parent is the server span current at submit time); the batcher
    then drives it from its own task and the model thread, where that context is not current.
    """

    def __init__(self, batcher: str):
        self.parent: Context = context.get_current()
        self.batcher = batcher
        self.queue = _tracer().start_span("queue", context=self.parent, attributes={"modelserve.batcher": batcher})
        self.batch: Span | None = None
        self.model: Span | None = None
        self._queued = True

    def leave_queue(self) -> None:
        """Taken into a batch, or dropped while waiting: whichever comes first ends the queue span."""
        if self._queued:
            self._queued = False
            self.queue.end()

    def start_batch(self, batch_id: int, size: int, position: int) -> None:
        self.leave_queue()
        attributes = {
            "modelserve.batcher": self.batcher,
            "modelserve.batch.id": batch_id,
            "modelserve.batch.size": size,
            "modelserve.batch.position": position,
        }
        self.batch = _tracer().start_span("batch", context=self.parent, attributes=attributes)

    def start_model(self) -> None:
        self.model = _tracer().start_span("model", context=trace.set_span_in_context(self.batch))

    def end_model(self, result: object) -> None:
        _end(self.model, result)

    def end_batch(self, result: object) -> None:
        _end(self.batch, result)


def work_spans(batcher: str) -> WorkSpans | None:
    """Spans for a request entering a batcher, or None when tracing is off."""
    return WorkSpans(batcher) if enabled() else None



def activate(span: Span):
    """Make a request's span current in the model thread, for code that sees no `Work` (a decoding loop's
    callback adds its events to `trace.get_current_span()`). Errors are left to the batcher to record."""
    return trace.use_span(span, record_exception=False, set_status_on_exception=False)
