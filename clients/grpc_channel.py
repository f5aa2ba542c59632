"""gRPC channels and calls with deadlines, retries and typed errors.

`GrpcCaller` wraps a channel with the call policy that every service client shares: every call
carries the API key (clients/auth.py) and a request id, each attempt gets a deadline (`timeout`
seconds), UNAVAILABLE and RESOURCE_EXHAUSTED are retried with the same backoff as REST
(honouring the servers' `retry-after` trailing metadata), everything else raises a typed error
at once. Streaming calls are retried only until the first response arrives, and
client streams only when the caller hands over a factory that can replay the request stream.
"""

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from opentelemetry import propagate

from .auth import bearer, explain, resolve_api_key
from .errors import ModelServeError, error_from_rpc
from .retry import RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0
# The servers accept 32 MiB messages (audio uploads, images); the gRPC default of 4 MiB is too small.
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024


def create_channel(
    target: str,
    *,
    secure: bool = False,
    root_certificates: bytes | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Iterable[tuple[str, Any]] = (),
) -> grpc.Channel:
    channel_options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Keepalive pings notice a dead peer (a killed pod behind a Service) within a minute.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        *options,
    ]
    if secure:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.secure_channel(target, credentials, options=channel_options)
    return grpc.insecure_channel(target, options=channel_options)


class GrpcCaller:
    """A channel plus deadline, retry and metadata policy: `GrpcCaller("host:50051")`."""

    def __init__(
        self,
        target: str | grpc.Channel,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        metadata: Iterable[tuple[str, str]] = (),
        api_key: str | None = None,
        **channel_options,
    ):
        """`api_key`: sent as `authorization: Bearer <key>` on every call (default $MODELSERVE_API_KEY);
        `authorization` in `metadata` wins over it."""
        self.metadata = tuple(metadata)
        self.sends_key = any(name == "authorization" for name, _ in self.metadata)
        if not self.sends_key and (key := resolve_api_key(api_key)):
            self.metadata += (("authorization", bearer(key)),)
            self.sends_key = True
        self.channel = create_channel(target, **channel_options) if isinstance(target, str) else target
        self.target = target if isinstance(target, str) else "channel"
        self.timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
        self.retry = retry or RetryPolicy()

    def _call_options(self, timeout: float | None) -> dict:
        trace_context: dict[str, str] = {}
        propagate.inject(trace_context)  # the caller's trace continues on the server (W3C traceparent)
        metadata = (("x-request-id", uuid.uuid4().hex), *self.metadata, *trace_context.items())
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": metadata}

    def _error(self, exc: grpc.RpcError) -> ModelServeError:
        return explain(error_from_rpc(exc), self.sends_key)

    def _wait_or_raise(self, number: int, error: ModelServeError, retry: RetryPolicy | None = None) -> None:
        delay = (retry or self.retry).delay(number, error)
        if delay is None:
            raise error
        log.info("gRPC call to %s: %s; retry %d in %.2f s", self.target, error, number, delay)
        time.sleep(delay)

    def unary(
        self, method: grpc.UnaryUnaryMultiCallable, request: Any, *, timeout: float | None = None
    ) -> Any:
        options = self._call_options(timeout)
        number = 0
        while True:
            number += 1
            try:
                return method(request, **options)
            except grpc.RpcError as exc:
                self._wait_or_raise(number, self._error(exc))

    def stream_unary(
        self,
        method: grpc.StreamUnaryMultiCallable,
        requests: Callable[[], Iterator[Any]],
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """`requests` is called once per attempt, so that a retry sends the whole stream again; pass
        `retry=NO_RETRY` when it cannot replay its stream (live audio)."""
        options = self._call_options(timeout)
        number = 0
        while True:
            number += 1
            try:
                return method(requests(), **options)
            except grpc.RpcError as exc:
                self._wait_or_raise(number, self._error(exc), retry)

    def unary_stream(
        self, method: grpc.UnaryStreamMultiCallable, request: Any, *, timeout: float | None = None
    ) -> Iterator[Any]:
        """Yield the server's messages; closing the iterator early cancels the call."""
        options = self._call_options(timeout)
        number = 0
        while True:
            number += 1
            call = method(request, **options)
            try:
                first = next(call)
                break
            except StopIteration:
                return
            except grpc.RpcError as exc:
                self._wait_or_raise(number, self._error(exc))
        try:
            yield first
            yield from call
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()  # a no-op once the call has finished

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "GrpcCaller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
