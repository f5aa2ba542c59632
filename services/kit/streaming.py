"""Streamed answers, with errors answered the same way on every transport.

A streamed answer is an async iterator of one transport's messages (SSE chunks, gRPC messages, OIP outputs),
usually rendered from an operation's events (`operations.Call.events`). `started` runs it up to its first message
before anything is sent, so that every refusal until then (validation, the batcher's admission, a failure before
any output) answers the way an unstreamed request would: a 4xx/5xx JSON body on REST, a gRPC status and no
message, an OIP error response and no output. After the first message an error can only be framed: an SSE
`error` event on REST (a raw byte stream can only be cut short, so that a client sees a truncated transfer rather
than an answer that merely ends early), the gRPC status after the messages sent, an error response on
ModelStreamInfer. An unexpected exception is logged and reaches the client as an internal error, the same on
every transport (and a ModelStreamInfer stream goes on with its next request).
"""

import json
import logging
import typing
from collections.abc import AsyncIterator
from typing import TypeVar

from fastapi.responses import StreamingResponse

from .errors import ServiceError

log = logging.getLogger(__name__)

Message = TypeVar("Message")
SSE_MEDIA_TYPE = "text/event-stream"
_NOTHING = object()


async def started(messages: AsyncIterator[Message]) -> AsyncIterator[Message]:
    """`messages` run up to its first message now (a refusal until then raises here); the returned iterator
    yields that message and the rest. Whatever they raise is a ServiceError."""
    try:
        first = await anext(messages, _NOTHING)
    except BaseException as exc:
        await _close(messages)
        _reraise(exc)
    return _continued(first, messages)


async def _continued(first, messages: AsyncIterator[Message]) -> AsyncIterator[Message]:
    try:
        if first is _NOTHING:
            return
        yield first
        async for message in messages:
            yield message
    except BaseException as exc:
        _reraise(exc)
    finally:
        await _close(messages)


def _reraise(exc: BaseException) -> typing.NoReturn:
    """ServiceErrors and cancellations as they are; anything else logged and raised as an internal error."""
    if isinstance(exc, ServiceError) or not isinstance(exc, Exception):
        raise exc
    log.error("stream failed", exc_info=exc)
    raise ServiceError(f"internal error: {type(exc).__name__}") from exc


async def _close(messages: AsyncIterator) -> None:
    close = getattr(messages, "aclose", None)
    if close is not None:
        await close()


def sse_event(data: dict, event: str | None = None) -> bytes:
    """One server-sent event: `data` as compact JSON, with an `event:` line when named."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def sse_error(error: ServiceError) -> bytes:
    """A mid-stream failure as an `error` event carrying the JSON error body a status code would have carried
    (the openai SDK raises APIError on it)."""
    return sse_event({"type": "error", **error.body()}, event="error")


async def _framed_as_sse(messages: AsyncIterator) -> AsyncIterator:
    try:
        async for message in messages:
            yield message
    except ServiceError as error:
        yield sse_error(error)


async def rest_stream(
    messages: AsyncIterator[bytes | str], media_type: str, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """A streamed REST answer, sent once its first message is made (before that, errors answer with their status
    code). After it, errors become an `error` event on a text/event-stream; any other body is cut short."""
    body = await started(messages)
    if media_type == SSE_MEDIA_TYPE:
        body = _framed_as_sse(body)
    return StreamingResponse(body, media_type=media_type, headers=headers)
