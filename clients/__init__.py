"""Python clients for the modelserve platform: REST (sync and async) and gRPC, one object each.

`with Client("http://127.0.0.1:8000") as client: client.translation.translate("Hi", source_lang="en",
target_lang="de").text`; `GrpcClient("127.0.0.1:50051")` and `AsyncClient(url)` have the same shape.
"""

from .client import AsyncClient, Client, GrpcClient
from .errors import (
    APIError,
    AuthenticationError,
    ConnectionFailedError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelServeError,
    NotFoundError,
    OverloadedError,
    ServerError,
    UnavailableError,
)
from .retry import RetryPolicy

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "GrpcClient",
    "InvalidRequestError",
    "ModelServeError",
    "NotFoundError",
    "OverloadedError",
    "RetryPolicy",
    "ServerError",
    "UnavailableError",
]
