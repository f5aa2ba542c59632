"""REST app factory: service routers plus health, metrics, errors, request ids and body limits."""

import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import metrics
from .errors import PayloadTooLarge, ServiceError, Unavailable
from .service import Service
from .state import ServerState
from .validation import describe

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
# Routes that answer before the model is ready and are kept out of the request metrics' noise.
OPERATIONAL_PATHS = {"/healthz", "/readyz", "/metrics"}


def error_response(error: ServiceError, error_body=None) -> JSONResponse:
    body = error_body(error) if error_body else error.body()
    return JSONResponse(body, status_code=int(error.http_status), headers=error.headers())


class ServingMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so that streamed responses pass through untouched."""

    def __init__(self, app, state: ServerState, max_body_bytes: int, error_body=None):
        self.app = app
        self.error_body = error_body
        self.state = state
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        request_id = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1") or uuid.uuid4().hex
        path = scope["path"]
        status = {"code": 500}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        if path in OPERATIONAL_PATHS:
            return await self.app(scope, receive, send_with_id)

        error = self._refuse_early(headers)
        if error is not None:
            metrics.REQUESTS.labels("rest", path, str(int(error.http_status))).inc()
            return await error_response(error, self.error_body)(scope, receive, send_with_id)

        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # An HTTPException passes FastAPI's body parsing untouched (anything else becomes a 400).
                    raise StarletteHTTPException(413, f"request body exceeds the {self.max_body_bytes} byte limit")
            return message

        started = time.perf_counter()
        self.state.request_started()
        metrics.INFLIGHT.labels("rest").inc()
        try:
            await self.app(scope, limited_receive, send_with_id)
        finally:
            metrics.INFLIGHT.labels("rest").dec()
            self.state.request_finished()
            route = scope.get("route")
            route_path = getattr(route, "path", "unmatched")
            metrics.REQUESTS.labels("rest", route_path, str(status["code"])).inc()
            metrics.REQUEST_LATENCY.labels("rest", route_path).observe(time.perf_counter() - started)

    def _refuse_early(self, headers: dict) -> ServiceError | None:
        if not self.state.ready:
            return Unavailable("model is still loading", retry_after=5)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return PayloadTooLarge(f"request body of {int(length)} bytes exceeds the {self.max_body_bytes} byte limit")
        return None


def create_rest_app(services: list[Service], state: ServerState, max_body_bytes: int, title: str = "modelserve") -> FastAPI:
    app = FastAPI(title=title)
    error_body = next((s.error_body for s in services if s.error_body), None)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError):
        return error_response(exc, error_body)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        return error_response(describe(exc.errors()), error_body)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail), "type": code}}
        if error_body:
            body = error_body(ServiceError(str(exc.detail)))
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(ServiceError(f"internal error: {type(exc).__name__}"), error_body)

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        if state.serving:
            return {"status": "ready", "services": [s.name for s in services]}
        reason = "draining" if state.draining else "loading"
        return JSONResponse({"status": reason}, status_code=503, headers={"Retry-After": "5"})

    @app.get("/metrics", include_in_schema=False)
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

    app.add_middleware(ServingMiddleware, state=state, max_body_bytes=max_body_bytes, error_body=error_body)
    return app
