"""HTTP transports (sync and async, on httpx) with timeouts, retries and typed errors.

Service clients call `request` for ordinary calls and `stream` for bodies read as they arrive
(TTS audio, server-sent events). Retries happen only before a response body is handed out, so
a stream never restarts half-way. One request id is sent on every attempt of a logical request
(the servers log and echo `x-request-id`), which ties the retries together in server logs.
"""

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx
from opentelemetry import propagate

from .auth import bearer, explain, resolve_api_key
from .errors import (
    ConnectionFailedError,
    DeadlineExceededError,
    ModelServeError,
    error_from_response,
)
from .retry import RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 5.0


def _timeout(seconds: float | httpx.Timeout | None) -> httpx.Timeout:
    if isinstance(seconds, httpx.Timeout):
        return seconds
    seconds = DEFAULT_TIMEOUT_S if seconds is None else seconds
    return httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT_S, seconds))


def _transport_error(exc: httpx.TransportError, url: str) -> ModelServeError:
    """httpx's network exceptions as the clients' errors (connect failures are retryable)."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        reason = str(exc) or type(exc).__name__
        return ConnectionFailedError(f"cannot connect to {url}: {reason}")
    if isinstance(exc, httpx.TimeoutException):
        return DeadlineExceededError(f"no answer from {url} within the client timeout ({type(exc).__name__})")
    return ModelServeError(f"connection to {url} failed: {exc or type(exc).__name__}")


@contextlib.contextmanager
def converted_errors(url: str) -> Iterator[None]:
    """Turn httpx errors raised while reading a streamed body into the clients' errors."""
    try:
        yield
    except httpx.TransportError as exc:
        raise _transport_error(exc, url) from exc


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None


class _SSEDecoder:
    """The server-sent events wire format (WHATWG HTML, "Parsing an event stream"), line by line."""

    def __init__(self) -> None:
        self.event, self.data, self.id = "", [], None

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:  # a blank line dispatches the event collected so far
            if not self.data:
                self.event = ""
                return None
            event = ServerSentEvent(self.event or "message", "\n".join(self.data), self.id)
            self.event, self.data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = value
        return None


def iter_sse(response: httpx.Response) -> Iterator[ServerSentEvent]:
    decoder = _SSEDecoder()
    with converted_errors(str(response.url)):
        for line in response.iter_lines():
            if (event := decoder.feed(line)) is not None:
                yield event
    if (event := decoder.feed("")) is not None:
        yield event


async def aiter_sse(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    decoder = _SSEDecoder()
    with converted_errors(str(response.url)):
        async for line in response.aiter_lines():
            if (event := decoder.feed(line)) is not None:
                yield event
    if (event := decoder.feed("")) is not None:
        yield event


def _auth(api_key: str | None, headers: dict[str, str] | None) -> tuple[bool, dict[str, str]]:
    """Whether credentials are sent, and the header to add; an Authorization header given explicitly wins."""
    if any(name.lower() == "authorization" for name in headers or {}):
        return True, {}
    key = resolve_api_key(api_key)
    return bool(key), {"authorization": bearer(key)} if key else {}


class _HttpTransport:
    """What the blocking and asyncio transports share: settings, request headers, the retry decision."""

    client_class: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
        http_client: httpx.Client | httpx.AsyncClient | None = None,
        api_key: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.sends_key, self.auth_headers = _auth(api_key, headers)
        self.client = http_client or self.client_class(
            base_url=self.base_url, timeout=_timeout(timeout), headers=headers
        )

    def _request_builder(
        self, method: str, path: str, timeout: float | None, kwargs: dict
    ) -> Callable[[], httpx.Request]:
        """Builds each attempt's request; one request id ties the retries together in server logs."""
        headers = {"x-request-id": uuid.uuid4().hex, **self.auth_headers, **kwargs.pop("headers", {})}
        propagate.inject(headers)  # the caller's trace continues on the server (W3C traceparent)
        extra = {"timeout": _timeout(timeout)} if timeout is not None else {}
        return functools.partial(self.client.build_request, method, path, headers=headers, **extra, **kwargs)

    def _refused(self, response: httpx.Response) -> ModelServeError:
        return explain(error_from_response(response), self.sends_key)

    def _retry_delay(self, number: int, error: ModelServeError, request: httpx.Request) -> float:
        """Seconds to wait before attempt `number + 1`; raises `error` when the policy gives up."""
        delay = self.retry.delay(number, error)
        if delay is None:
            raise error
        log.info("%s %s: %s; retry %d in %.2f s", request.method, request.url, error, number, delay)
        return delay


class RestTransport(_HttpTransport):
    """Blocking HTTP transport: `with RestTransport("http://host:8000") as t: t.request(...)`."""

    client_class = httpx.Client

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Send with retries; return the successful response, body read. Raises `ModelServeError`."""
        with self.stream(method, path, **kwargs) as response:
            with converted_errors(self.base_url):
                response.read()
        return response

    @contextlib.contextmanager
    def stream(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs
    ) -> Iterator[httpx.Response]:
        """Send with retries; yield the successful response with its body not yet read."""
        build_request = self._request_builder(method, path, timeout, kwargs)
        number = 0
        while True:
            number += 1
            request = build_request()
            try:
                response = self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                error = _transport_error(exc, str(request.url))
                error.__cause__ = exc
            else:
                if response.is_success:
                    break
                try:
                    response.read()
                except httpx.TransportError:
                    pass
                finally:
                    response.close()
                error = self._refused(response)
            time.sleep(self._retry_delay(number, error, request))
        try:
            yield response
        finally:
            response.close()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "RestTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRestTransport(_HttpTransport):
    """The asyncio twin of `RestTransport` (httpx.AsyncClient, asyncio.sleep between attempts)."""

    client_class = httpx.AsyncClient

    async def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        async with self.stream(method, path, **kwargs) as response:
            with converted_errors(self.base_url):
                await response.aread()
        return response

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs
    ) -> AsyncIterator[httpx.Response]:
        build_request = self._request_builder(method, path, timeout, kwargs)
        number = 0
        while True:
            number += 1
            request = build_request()
            try:
                response = await self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                error = _transport_error(exc, str(request.url))
                error.__cause__ = exc
            else:
                if response.is_success:
                    break
                try:
                    await response.aread()
                except httpx.TransportError:
                    pass
                finally:
                    await response.aclose()
                error = self._refused(response)
            await asyncio.sleep(self._retry_delay(number, error, request))
        try:
            yield response
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> "AsyncRestTransport":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
