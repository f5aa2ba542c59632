"""Typed errors for every client: one class per outcome a caller handles differently.

REST and gRPC failures map onto the same classes, so code that catches `OverloadedError` works
whichever protocol it speaks. Each error keeps what the server said: its JSON error body
(`{"error": {"code", "message", "type", "param"}}`, or TF Serving's `{"error": "..."}`), the
HTTP status or gRPC code, Retry-After and the request id.
"""

import json
from typing import Any

import grpc
import httpx


class ModelServeError(Exception):
    """Base of every error the clients raise."""


class ConnectionFailedError(ModelServeError):
    """The server could not be reached (refused, DNS, TLS): no request was processed."""


class APIError(ModelServeError):
    """The server answered with an error."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        grpc_code: grpc.StatusCode | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        body: Any = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.grpc_code = grpc_code
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        origin = (
            str(self.status)
            if self.status is not None
            else (self.grpc_code.name if self.grpc_code else "error")
        )
        return f"{origin} {self.code}: {self.message}" if self.code else f"{origin}: {self.message}"


class InvalidRequestError(APIError):
    """400/413/415/422 or INVALID_ARGUMENT: the request itself is wrong; retrying cannot help."""


class AuthenticationError(APIError):
    """401/403 or UNAUTHENTICATED/PERMISSION_DENIED: no API key sent, or one the server (or a gateway
    in front of it) refuses. The message says which; retrying cannot help."""


class NotFoundError(APIError):
    """404 or NOT_FOUND: unknown route, model, voice or version."""


class OverloadedError(APIError):
    """429, 503 `overloaded` or RESOURCE_EXHAUSTED: the queue is full; retry after `retry_after`."""


class UnavailableError(APIError):
    """502/503 or UNAVAILABLE: loading, draining, or no healthy backend; retry after `retry_after`."""


class DeadlineExceededError(APIError):
    """504 / DEADLINE_EXCEEDED from the server, or the client's own timeout ran out."""


class ServerError(APIError):
    """Any other 5xx or gRPC failure."""


_BY_STATUS = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    413: InvalidRequestError,
    415: InvalidRequestError,
    422: InvalidRequestError,
    429: OverloadedError,
    502: UnavailableError,
    504: DeadlineExceededError,
}

_BY_GRPC_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


# Every error code of the kit (services/kit/errors.py; tests/clients/test_client_errors.py keeps the two equal),
# as the class its gRPC status gets: for errors that arrive inside a stream without a status.
ERRORS_BY_CODE = {
    "internal": ServerError,
    "invalid_argument": InvalidRequestError,
    "invalid_api_key": AuthenticationError,
    "request_timeout": DeadlineExceededError,
    "not_found": NotFoundError,
    "payload_too_large": InvalidRequestError,
    "unsupported_media_type": InvalidRequestError,
    "overloaded": OverloadedError,
    "unavailable": UnavailableError,
    "deadline_exceeded": DeadlineExceededError,
    "cancelled": ServerError,
}


def error_from_event(body: dict) -> APIError:
    """The typed error for an error event inside a stream (server-sent events): `{"error": {...}}`."""
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    code = error.get("code") or error.get("type")
    cls = ERRORS_BY_CODE.get(code, ServerError)
    return cls(str(error.get("message") or error), code=code, param=error.get("param"), body=body)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in delay-seconds or HTTP-date form; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error for a non-2xx response whose body has been read."""
    status = response.status_code
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = response.text
    code = param = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # the kit's (and OpenAI's) shape
        error = body["error"]
        message = str(error.get("message") or error)
        code, param = error.get("code") or error.get("type"), error.get("param")
    elif isinstance(body, dict) and isinstance(body.get("error"), str):  # TF Serving's shape
        message = body["error"]
    elif isinstance(body, dict) and "detail" in body:  # a plain FastAPI/Starlette app
        message = str(body["detail"])
    else:
        message = (str(body).strip() or response.reason_phrase or "no error body")[:500]
    cls = _BY_STATUS.get(status)
    if cls is None:
        if status == 503:
            cls = OverloadedError if code == "overloaded" else UnavailableError
        else:
            cls = ServerError if status >= 500 else APIError
    return cls(
        message,
        status=status,
        code=code,
        param=param,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        request_id=response.headers.get("x-request-id"),
        body=body,
    )


def error_from_rpc(error: grpc.RpcError) -> APIError:
    """The typed error for a failed gRPC call (server status or a client-side deadline)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    metadata = dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
    cls = _BY_GRPC_CODE.get(code, ServerError)
    return cls(
        details or code.name,
        grpc_code=code,
        code=code.name.lower(),
        retry_after=parse_retry_after(metadata.get("retry-after")),
        request_id=metadata.get("x-request-id"),
    )
