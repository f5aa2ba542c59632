"""gRPC server factory (grpc.aio): health, reflection, message limits, metrics and error mapping."""

import asyncio
import contextlib
import logging
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import trace

from protos.inference import SERVICE_NAME as OIP_SERVICE

from . import logs, metrics, oip, tracing
from .auth import ApiKeys
from .config import ServiceSettings
from .errors import Overloaded, ServiceError, Unauthenticated, Unavailable
from .service import Service
from .state import ServerState

log = logging.getLogger(__name__)

# Infrastructure RPCs answer while loading and stay out of the request metrics.
EXEMPT_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
# Health checks answer without a key (probes carry none); reflection needs one when keys are on.
OPEN_PREFIXES = ("/grpc.health.",)
# The Open Inference Protocol's own health and readiness calls answer while loading (they say so themselves);
# like every other RPC they are counted and their errors mapped to status codes.
UNGATED_METHODS = {f"/{OIP_SERVICE}/{method}" for method in ("ServerLive", "ServerReady", "ModelReady")}
REQUEST_ID_KEY = "x-request-id"
# RPCs grpc admits beyond max_concurrency and the health Watch streams: health checks and refusals.
SHORT_CALL_HEADROOM = 32
# Status codes that make a server span an error (OpenTelemetry's gRPC conventions): the others are the caller's.
SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
}


def time_remaining(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline in seconds, for the batcher (None when the client set none)."""
    return context.time_remaining()


class ServingInterceptor(grpc.aio.ServerInterceptor):
    """Readiness gate, in-flight tracking, metrics, traces, access logs, and ServiceError -> status code for
    every RPC."""

    def __init__(self, state: ServerState, api_keys: ApiKeys, retry_after_s: float = 1, service: str = "modelserve"):
        self.state = state
        self.api_keys = api_keys
        self.retry_after_s = retry_after_s
        self.service = service

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        if (key_error := self._key_error(metadata)) is not None:
            refused = logs.RequestRecord("grpc", self.service, _request_id(metadata), route=method)
            return _refusal(handler, method, key_error, refused)
        if method.startswith(EXEMPT_PREFIXES):
            return handler
        gated = method not in UNGATED_METHODS
        wrap_kwargs = dict(
            request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request_or_iterator, context):
                async with self._tracked(method, metadata, gated, context) as call:
                    response = await inner(call.counted(request_or_iterator), context)
                    call.record.bytes_out += _message_size(response)
                    return response

            factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            return factory(unary_response, **wrap_kwargs)

        inner = handler.unary_stream or handler.stream_stream

        async def streamed_response(request_or_iterator, context):
            async with self._tracked(method, metadata, gated, context) as call:
                async for item in inner(call.counted(request_or_iterator), context):
                    call.record.bytes_out += _message_size(item)
                    yield item

        factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return factory(streamed_response, **wrap_kwargs)

    @contextlib.asynccontextmanager
    async def _tracked(self, method: str, metadata, gated: bool, context):
        """One call, counted and logged: refused while loading or draining (when gated); its failure aborts it
        with its status."""
        call = _TrackedCall(self.state, method, metadata, self.service)
        try:
            if gated:
                self._check_ready()
            yield call
        except BaseException as exc:
            await call.fail(exc, context)
        finally:
            call.end()

    def _check_ready(self) -> None:
        if not self.state.ready:
            raise Unavailable("model is still loading", retry_after=5)
        if self.state.draining:
            raise Unavailable("server is shutting down", retry_after=self.retry_after_s)

    def _key_error(self, metadata) -> Unauthenticated | None:
        # Binary (-bin) metadata carries no key.
        refusal = self.api_keys.refusal(
            [value if isinstance(value, str) else None for key, value in metadata or () if key == "authorization"]
        )
        if refusal == "repeated":
            return Unauthenticated("more than one 'authorization' metadata entry: send exactly one")
        if refusal is not None:
            return Unauthenticated("missing or invalid API key: send metadata 'authorization: Bearer <key>'")
        return None


def _request_id(metadata) -> str:
    values = [value for key, value in metadata or () if key == REQUEST_ID_KEY]
    return logs.request_id_from(values[0] if values else None)


def _message_size(message) -> int:
    """Serialized size of a request or response: protobuf messages, or raw bytes for generic handlers."""
    if isinstance(message, bytes | bytearray):
        return len(message)
    byte_size = getattr(message, "ByteSize", None)
    return byte_size() if byte_size is not None else 0


def _refusal(handler, method: str, error: ServiceError, record: logs.RequestRecord):
    """A handler of the same shape as `handler` that answers `error` without running it."""

    async def refuse(_request_or_iterator, context):
        metrics.REQUESTS.labels("grpc", method, error.grpc_code.name).inc()
        record.status = error.grpc_code.name
        record.log()
        await context.abort(error.grpc_code, error.message)

    async def refuse_stream(request_or_iterator, context):
        await refuse(request_or_iterator, context)
        yield  # pragma: no cover - abort raises first

    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **kwargs)


class _TrackedCall:
    """Metrics, in-flight accounting, server span and access line for one RPC, and the mapping of its failure
    to a status."""

    def __init__(self, state: ServerState, method: str, metadata, service: str):
        self.state = state
        self.method = method
        self.status = "OK"
        self.started = time.perf_counter()
        self.record = logs.RequestRecord("grpc", service, _request_id(metadata), route=method)
        self.span = self._server_span(metadata) if tracing.enabled() else None
        # Each RPC runs in an asyncio task of its own, so what is set here ends with it. Not reset on purpose:
        # a streaming handler can be finalised from another task, where resetting a context token fails.
        logs.current_request.set(self.record)
        if self.span is not None:
            otel_context.attach(trace.set_span_in_context(self.span))
        state.request_started()
        metrics.INFLIGHT.labels("grpc").inc()

    def _server_span(self, metadata) -> trace.Span:
        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        service, _, method = self.method.lstrip("/").rpartition("/")
        attributes = {
            "rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
            "modelserve.request_id": self.record.request_id,
        }
        return tracing.start_server_span(self.method.lstrip("/"), carrier, attributes)

    def counted(self, request_or_iterator):
        """The request, or a request stream that counts its bytes as the handler reads it."""
        if not hasattr(request_or_iterator, "__aiter__"):
            self.record.bytes_in += _message_size(request_or_iterator)
            return request_or_iterator
        return self._count_stream(request_or_iterator)

    async def _count_stream(self, requests):
        async for message in requests:
            self.record.bytes_in += _message_size(message)
            yield message

    async def fail(self, exc: BaseException, context) -> None:
        """Re-raise cancellations and aborts; turn everything else into an aborted call."""
        if not isinstance(exc, Exception):  # CancelledError, GeneratorExit: the client went away
            self.status = "CANCELLED"
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            self.status = (context.code() or grpc.StatusCode.UNKNOWN).name
            raise exc
        if isinstance(exc, ServiceError):
            self.status = exc.grpc_code.name
            metadata = tuple((k.lower(), v) for k, v in exc.headers().items())
            await context.abort(exc.grpc_code, exc.message, trailing_metadata=metadata)
        self.status = "INTERNAL"
        if self.span is not None:
            self.span.record_exception(exc)
        log.error("unhandled error in %s", self.method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    def end(self) -> None:
        metrics.INFLIGHT.labels("grpc").dec()
        self.state.request_finished()
        metrics.REQUESTS.labels("grpc", self.method, self.status).inc()
        metrics.REQUEST_LATENCY.labels("grpc", self.method).observe(time.perf_counter() - self.started)
        self.record.status = self.status
        self.record.log()  # while the span is current: the line carries its ids
        if self.span is not None:
            code = grpc.StatusCode[self.status]
            self.span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in SERVER_ERRORS:
                self.span.set_status(trace.StatusCode.ERROR, self.status)
            self.span.end()


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """At most `max_concurrency` RPCs at once, the health service not among them. grpc's own
    `maximum_concurrent_rpcs` counts every RPC: open health Watch streams (no key, never ending) took the slots
    of work and then refused Health/Check too. Placed after ServingInterceptor, so a call refused for its key
    never takes a slot either."""

    def __init__(self, max_concurrency: int, retry_after_s: float):
        self.max_concurrency = max_concurrency
        self.retry_after_s = retry_after_s
        self.active = 0
        metrics.REJECTED.labels(batcher="grpc", reason="concurrency")  # at 0 from the start, for rate()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary_response(request_or_iterator, context):
                await self._admit(context)
                try:
                    return await inner(request_or_iterator, context)
                finally:
                    self.active -= 1

            factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            return factory(unary_response, **kwargs)

        inner = handler.unary_stream or handler.stream_stream

        async def streamed_response(request_or_iterator, context):
            await self._admit(context)
            try:
                async for item in inner(request_or_iterator, context):
                    yield item
            finally:
                self.active -= 1

        factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return factory(streamed_response, **kwargs)

    async def _admit(self, context) -> None:
        if self.active >= self.max_concurrency:
            metrics.REJECTED.labels(batcher="grpc", reason="concurrency").inc()
            error = Overloaded(
                f"{self.active} requests in progress, the limit of this server; try again shortly",
                retry_after=self.retry_after_s,
            )
            metadata = tuple((key.lower(), value) for key, value in error.headers().items())
            await context.abort(error.grpc_code, error.message, trailing_metadata=metadata)
        self.active += 1


class BoundedHealthServicer(health.aio.HealthServicer):
    """grpc's health service with a bound on Watch streams, which need no key and stay open until the client
    leaves: beyond it Watch answers RESOURCE_EXHAUSTED while Check keeps answering."""

    def __init__(self, max_watches: int):
        super().__init__()
        self.max_watches = max_watches
        self.watches = 0

    async def Watch(self, request, context) -> None:  # noqa: N802 - the gRPC method's name
        if self.watches >= self.max_watches:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.watches} health Watch streams open, the limit of this server; use Health/Check",
            )
        self.watches += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watches -= 1


def create_grpc_server(
    services: list[Service],
    state: ServerState,
    settings: ServiceSettings,
    api_keys: ApiKeys | None = None,
    *,
    max_connections: int | None = None,
) -> grpc.aio.Server:
    """`max_connections` overrides settings.max_connections (the server lowers it to fit the open-file limit)."""
    max_message_bytes = settings.grpc_max_message_bytes

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    server = grpc.aio.server(
        interceptors=[
            ServingInterceptor(
                state, api_keys or ApiKeys.from_env(), settings.retry_after_s,
                service=services[0].name if len(services) == 1 else "platform",
            ),
            AdmissionInterceptor(settings.max_concurrency, settings.retry_after_s),
        ],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_allowed_incoming_connections", max_connections or settings.max_connections),
            ("grpc.max_concurrent_streams", settings.grpc_max_streams_per_connection),
            # A connection that opens and never finishes its HTTP/2 handshake (gRPC's slowloris).
            ("grpc.server_handshake_timeout_ms", ms(settings.header_timeout_s)),
            ("grpc.max_connection_idle_ms", ms(settings.grpc_max_connection_idle_s)),
            # Dead peers are found (and their streams, health Watch ones included, ended) by the server's pings.
            ("grpc.keepalive_time_ms", ms(settings.grpc_keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", ms(settings.grpc_keepalive_timeout_s)),
            # Clients' pings: no more often than this, and only while an RPC is open; else strikes, then GOAWAY.
            ("grpc.http2.min_ping_interval_without_data_ms", ms(settings.grpc_min_ping_interval_s)),
            ("grpc.http2.max_ping_strikes", settings.grpc_max_ping_strikes),
            ("grpc.keepalive_permit_without_calls", 0),
        ],
        # A backstop over everything, health included, beyond the two bounds above: Health/Check and refusals
        # (short calls) always have this headroom.
        maximum_concurrent_rpcs=settings.max_concurrency + settings.grpc_max_health_watches + SHORT_CALL_HEADROOM,
    )
    names = []
    for service in services:
        for entry in service.grpc:
            entry.add_to_server(entry.servicer, server)
            names.append(entry.service_name)
    registry = oip.Registry([model for service in services for model in service.oip], state)
    oip.add_to_server(oip.InferenceServicer(registry, max_message_bytes), server)

    health_servicer = BoundedHealthServicer(settings.grpc_max_health_watches)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def publish(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *names, OIP_SERVICE]:
            asyncio.ensure_future(health_servicer.set(name, status))

    publish(False)
    state.on_change(publish)
    if settings.grpc_reflection:
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return server
