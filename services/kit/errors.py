"""One error type per outcome a client must tell apart, each mapped once to HTTP and gRPC."""

from http import HTTPStatus

import grpc


class ServiceError(Exception):
    http_status: int = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    code: str = "internal"

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def body(self) -> dict:
        # "type" keeps OpenAI SDKs happy: they read error.message / error.type / error.code.
        error = {"code": self.code, "message": self.message, "type": self.code}
        if self.field:
            error["param"] = self.field
        return {"error": error}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class InvalidArgument(ServiceError):
    http_status = HTTPStatus.BAD_REQUEST
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    code = "invalid_argument"


class Unauthenticated(ServiceError):
    http_status = HTTPStatus.UNAUTHORIZED
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    code = "invalid_api_key"  # what OpenAI answers; its SDK raises AuthenticationError on the 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class RequestTimeout(ServiceError):
    """A request head that did not arrive in time: the 408 the REST server writes itself (`http_server`), before
    any route runs. A request that outlives its deadline once admitted is `DeadlineExceeded`."""

    http_status = HTTPStatus.REQUEST_TIMEOUT
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    code = "request_timeout"


class NotFound(ServiceError):
    http_status = HTTPStatus.NOT_FOUND
    grpc_code = grpc.StatusCode.NOT_FOUND
    code = "not_found"


class PayloadTooLarge(ServiceError):
    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    http_status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    code = "unsupported_media_type"


class Overloaded(ServiceError):
    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "overloaded"


class Unavailable(ServiceError):
    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = grpc.StatusCode.UNAVAILABLE
    code = "unavailable"


class DeadlineExceeded(ServiceError):
    http_status = HTTPStatus.GATEWAY_TIMEOUT
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    code = "deadline_exceeded"


class Cancelled(ServiceError):
    http_status = 499  # nginx's "client closed request"; the client never sees it
    grpc_code = grpc.StatusCode.CANCELLED
    code = "cancelled"
