"""REST app factory: service routers plus health, metrics, errors, request ids and body limits."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import iter_route_contexts
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from . import logs, metrics, oip, tracing
from .auth import ApiKeys
from .config import ServiceSettings
from .errors import InvalidArgument, Overloaded, PayloadTooLarge, ServiceError, Unauthenticated, Unavailable
from .json_limits import ENCODING_PROBLEM, JsonScanner, parses_as_json
from .playground import CrossOriginPages, add_playground, is_playground_path
from .service import Service
from .state import ServerState
from .validation import describe

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
# Probes answer before the model is ready, without a key, and are kept out of the request metrics' noise.
PROBE_PATHS = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
# Open Inference Protocol requests carry tensors: their route bounds JSON by the model's declared tensor sizes.
OIP_ROOT = "/v2"
OIP_PREFIX = OIP_ROOT + "/"
METRICS_PATH = "/metrics"


def error_response(error: ServiceError, error_body=None) -> JSONResponse:
    body = error_body(error) if error_body else error.body()
    return JSONResponse(body, status_code=int(error.http_status), headers=error.headers())


class ErrorBodies:
    """Each service's error shape on its own routes (TF Serving's `{"error": "..."}` on the ViT routes, say); on
    paths no route matches, the shape of the protocol whose prefix they carry (an unknown /v2/... path answers
    as the Open Inference Protocol does); elsewhere the shape of a process's only service, or the kit's."""

    def __init__(self, by_route: dict[str, Callable[[ServiceError], dict]], default):
        self.by_route = by_route
        self.default = default
        self.by_prefix: dict[str, Callable[[ServiceError], dict]] = {}

    @classmethod
    def of(cls, services: list[Service]) -> "ErrorBodies":
        by_route = {
            route.path: service.error_body
            for service in services
            if service.router is not None and service.error_body is not None
            for route in iter_route_contexts(service.router.routes)
        }
        return cls(by_route, services[0].error_body if len(services) == 1 else None)

    def for_path(self, route_path: str | None, request_path: str = ""):
        if route_path in self.by_route:
            return self.by_route[route_path]
        for prefix, error_body in self.by_prefix.items():
            if request_path == prefix or request_path.startswith(prefix + "/"):
                return error_body
        return self.default

    def for_request(self, request: Request):
        return self.for_path(getattr(request.scope.get("route"), "path", None), request.url.path)


class ServingMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so that streamed responses pass through untouched.

    In order: request id, API key, readiness/draining, the in-flight limit, body size and body time. Every
    request but the probes and /metrics gets a server span (when tracing is on) and one access log line.
    """

    def __init__(
        self,
        app,
        state: ServerState,
        settings: ServiceSettings,
        api_keys: ApiKeys,
        routes: list,
        error_bodies=None,
        service: str = "modelserve",
        metrics_paths: frozenset[str] = frozenset({METRICS_PATH}),
    ):
        self.app = app
        self.metrics_paths = metrics_paths
        metrics.REJECTED.labels(batcher="rest", reason="concurrency")  # at 0 from the start, for rate()
        self.service = service
        self.error_bodies = error_bodies or ErrorBodies({}, None)
        self.state = state
        self.max_body_bytes = settings.max_body_bytes
        self.max_json_depth = settings.max_json_depth
        self.max_json_elements = settings.max_json_elements
        self.body_timeout_s = settings.body_timeout_s
        self.max_concurrency = settings.max_concurrency
        self.retry_after_s = settings.retry_after_s
        self.api_keys = api_keys
        self.routes = routes
        self.active = 0
        # Metric children looked up once (per route and status): labels() takes a lock and builds a key each call.
        # Routes are templates and statuses a few codes, so these stay small.
        self.inflight = metrics.INFLIGHT.labels("rest")
        self.answered: dict[tuple[str, str], Any] = {}
        self.latency: dict[str, Any] = {}

    def _count(self, route: str, status: str) -> None:
        counter = self.answered.get((route, status))
        if counter is None:
            counter = self.answered[(route, status)] = metrics.REQUESTS.labels("rest", route, status)
        counter.inc()

    def _observe(self, route: str, seconds: float) -> None:
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = metrics.REQUEST_LATENCY.labels("rest", route)
        histogram.observe(seconds)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        request_id = logs.request_id_from(headers.get(REQUEST_ID_HEADER.encode()))
        path = scope["path"]
        status = {"code": 500}
        record = logs.RequestRecord("rest", self.service, request_id, method=scope["method"])

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(REQUEST_ID_HEADER.encode(), request_id.encode())]
            elif message["type"] == "http.response.body":
                record.bytes_out += len(message.get("body", b""))
            await send(message)

        # The playground's page and files: no key (the page asks for one on a 401), served while models load.
        if path in PROBE_PATHS or is_playground_path(path):
            return await self.app(scope, receive, send_with_id)
        if path in self.metrics_paths:  # answers while loading, but only to a key holder when keys are on
            error = self._check_key(scope)
            app = error_response(error, self.error_bodies.for_path(path, path)) if error else self.app
            return await app(scope, receive, send_with_id)

        span = self._server_span(scope, request_id) if tracing.enabled() else None
        token = logs.current_request.set(record)
        try:
            with trace.use_span(span, end_on_exit=True) if span is not None else contextlib.nullcontext():
                try:
                    await self._serve(scope, headers, receive, send_with_id, status, record)
                finally:
                    self._finish(record, span, status["code"])
        finally:
            logs.current_request.reset(token)

    @staticmethod
    def _finish(record: logs.RequestRecord, span: trace.Span | None, status: int) -> None:
        """Name the span by the route template and write the access line (inside the span: it carries the ids)."""
        record.status = str(status)
        if span is not None:
            span.update_name(f"{record.method} {record.route}")
            span.set_attributes({"http.route": record.route, "http.response.status_code": status})
            if status >= 500:
                span.set_status(trace.StatusCode.ERROR)
        record.log()

    async def _serve(self, scope, headers: dict, receive, send_with_id, status: dict, record: logs.RequestRecord):
        error = self._refuse_early(scope, headers)
        if error is not None:
            # Label by route template, never the raw path: random paths must not grow /metrics (or traces).
            record.route = self._route_template(scope)
            self._count(record.route, str(int(error.http_status)))
            body = self.error_bodies.for_path(record.route, scope["path"])
            return await error_response(error, body)(scope, receive, send_with_id)

        received = 0
        body_done = False
        # Checked piece by piece as it arrives, so that a refused body is refused before the rest is read.
        json_scanner = (
            JsonScanner(max_depth=self.max_json_depth, max_elements=self.max_json_elements)
            if parses_as_json(headers.get(b"content-type")) and not scope["path"].startswith(OIP_PREFIX)
            else None
        )
        body_deadline = asyncio.get_running_loop().time() + self.body_timeout_s

        async def limited_receive():
            nonlocal received, body_done
            if body_done:
                return await receive()  # after the body: only the disconnect, however late
            try:
                # asyncio.timeout arms one timer on this task; wait_for would start a task per body message.
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                # An HTTPException passes FastAPI's body parsing untouched (anything else becomes a 400).
                raise StarletteHTTPException(
                    408, f"request body not received within {self.body_timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise StarletteHTTPException(413, f"request body exceeds the {self.max_body_bytes} byte limit")
                if json_scanner is not None and (problem := json_scanner.feed(message.get("body", b""), body_done)):
                    raise StarletteHTTPException(
                        400, problem if problem.startswith(ENCODING_PROBLEM) else f"request body: {problem}"
                    )
            return message

        started = time.perf_counter()
        self.active += 1
        self.state.request_started()
        self.inflight.inc()
        try:
            await self.app(scope, limited_receive, send_with_id)
        finally:
            self.inflight.dec()
            self.state.request_finished()
            self.active -= 1
            record.route = getattr(scope.get("route"), "path", "unmatched")
            record.bytes_in = received
            self._count(record.route, str(status["code"]))
            self._observe(record.route, time.perf_counter() - started)

    @staticmethod
    def _server_span(scope, request_id: str) -> trace.Span:
        """Named by the method until routing finds the template; the caller's traceparent is its parent."""
        carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"], "modelserve.request_id": request_id}
        return tracing.start_server_span(scope["method"], carrier, attributes)

    def _check_key(self, scope) -> ServiceError | None:
        if not self.api_keys.enabled:  # nothing to read: skip the pass over the headers
            return None
        refusal = self.api_keys.refusal(
            [value.decode("latin-1") for key, value in scope["headers"] if key == b"authorization"]
        )
        if refusal == "repeated":
            return InvalidArgument("more than one Authorization header: send exactly one", field="authorization")
        if refusal == "missing":
            return Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        if refusal == "invalid":
            return Unauthenticated("invalid API key")
        return None

    def _refuse_early(self, scope, headers: dict) -> ServiceError | None:
        error = self._check_key(scope)
        if error is not None:
            return error
        if not self.state.ready:
            return Unavailable("model is still loading", retry_after=5)
        if self.state.draining:
            return Unavailable("server is shutting down", retry_after=self.retry_after_s)
        if self.active >= self.max_concurrency:
            metrics.REJECTED.labels(batcher="rest", reason="concurrency").inc()
            return Overloaded(
                f"{self.active} requests in progress, the limit of this server; try again shortly",
                retry_after=self.retry_after_s,
            )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return PayloadTooLarge(f"request body of {int(length)} bytes exceeds the {self.max_body_bytes} byte limit")
        return None

    def _route_template(self, scope) -> str:
        # Routes of included routers sit behind one entry of app.routes; iter_route_contexts lists them whole.
        for route in iter_route_contexts(self.routes):
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path or "unmatched"
        return "unmatched"


def create_rest_app(
    services: list[Service],
    state: ServerState,
    settings: ServiceSettings,
    api_keys: ApiKeys | None = None,
    title: str = "modelserve",
) -> FastAPI:
    docs = {} if settings.docs else dict(docs_url=None, redoc_url=None, openapi_url=None)
    # FastAPI's own OpenTelemetry spans (0.165+) stay off: ServingMiddleware makes the server span, the same way
    # for REST and gRPC and also for the requests it refuses before FastAPI sees them.
    # No slash redirects: Starlette's point at an absolute http:// URL, the wrong scheme behind a TLS-terminating
    # proxy, and neither OpenAI nor Triton redirects. A path with a trailing slash is a 404 in its protocol's shape
    # (but `GET /v2/`, the spec's server-metadata path, which the OIP router serves).
    app = FastAPI(
        title=title, telemetry={"tracing": False, "metrics": False, "logs": False}, redirect_slashes=False, **docs
    )
    api_keys = api_keys or ApiKeys.from_env()
    error_bodies = ErrorBodies.of(services)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        return error_response(exc, error_bodies.for_request(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error_response(describe(exc.errors()), error_bodies.for_request(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {
            400: "invalid_argument", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        detail = str(exc.detail)
        if exc.status_code == 404 and "route" not in request.scope:
            detail = f"no route {request.method} {request.url.path}"
            if len(request.url.path) > 1 and request.url.path.endswith("/"):
                detail += " (routes take no trailing slash)"
        body = {"error": {"code": code, "message": detail, "type": code}}
        if error_body := error_bodies.for_request(request):
            body = error_body(ServiceError(detail))
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(ServiceError(f"internal error: {type(exc).__name__}"), error_bodies.for_request(request))

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        # Alive unless a model thread is wedged: a batch running with no progress beat for too long.
        stalled = {
            batcher.name: round(batcher.stalled_for(), 1)
            for service in services
            for batcher in service.batchers
            if batcher.stalled_for() > service.settings.liveness_stall_s
        }
        if stalled:
            return JSONResponse({"status": "stalled", "batchers": stalled}, status_code=503)
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        if state.serving:
            return {"status": "ready", "services": [s.name for s in services]}
        reason = "draining" if state.draining else "loading"
        return JSONResponse({"status": reason}, status_code=503, headers={"Retry-After": "5"})

    if settings.metrics_port is None:

        @app.get(METRICS_PATH, include_in_schema=False)
        async def prometheus_metrics():
            return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        data = [
            {"object": "model", "owned_by": "modelserve", "service": service.name, **entry}
            for service in services
            for entry in service.models()
        ]
        return {"object": "list", "data": data}

    for service in services:
        if service.router is not None:
            app.include_router(service.router)
    registry = oip.Registry([model for service in services for model in service.oip], state)
    oip_router = oip.create_router(
        registry, oip.RestLimits(settings.max_body_bytes, settings.max_json_depth, settings.max_response_bytes)
    )
    app.include_router(oip_router)
    if settings.playground:
        add_playground(app, [service.name for service in services], settings)
    # The server's own refusals on /v2 (413, 408, a 500) answer in the protocol's shape too, as do unknown /v2 paths.
    error_bodies.by_route.update({route.path: oip.error_body for route in oip_router.routes})
    error_bodies.by_prefix[OIP_ROOT] = oip.error_body

    app.add_middleware(
        ServingMiddleware, state=state, settings=settings, api_keys=api_keys, routes=app.router.routes,
        error_bodies=error_bodies, service=services[0].name if len(services) == 1 else "platform",
        metrics_paths=frozenset({METRICS_PATH, *(path for service in services for path in service.metrics_paths)}),
    )
    app.add_middleware(CrossOriginPages, settings=settings)  # outermost: preflights carry no key
    return app
