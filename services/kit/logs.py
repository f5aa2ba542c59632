"""Structured logs: JSON or text lines on stderr, and one access line per request.

The access line says where a request's time went (queue, compute, batch size) beside the usual status,
route template, bytes and duration. It never carries a payload, a header or an API key: the fields are
filled from counters, the route template and the status only. Any line logged while a traced request
is current carries its trace and span ids.

A small formatter on the standard `json` module rather than python-json-logger: the kit needs one fixed
shape (a few standard keys plus the record's `fields`), and this keeps the kit's dependencies unchanged.
"""

import json
import logging
import random
import re
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from opentelemetry import trace

ACCESS_LOGGER = "modelserve.access"
access_log = logging.getLogger(ACCESS_LOGGER)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A caller's request id is kept only when it is this long at most and printable ASCII without spaces:
# anything else could forge log lines or response headers, so it is replaced by a generated id.
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID}}}")
# One encoder for every line: json.dumps with an argument builds a new JSONEncoder per call.
_JSON = json.JSONEncoder(default=str)


def request_id_from(sent: str | bytes | None) -> str:
    """The caller's request id (x-request-id) when it is safe to echo and log, else a new one."""
    if isinstance(sent, bytes):
        sent = sent.decode("latin-1")
    if sent and _REQUEST_ID.fullmatch(sent):
        return sent
    # 32 hex digits, as uuid4().hex, from the process's generator: an id needs to be unique, not secret, and
    # uuid4 asks the kernel for random bytes on every request.
    return f"{random.getrandbits(128):032x}"


def _trace_fields() -> dict:
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": format(span_context.trace_id, "032x"), "span_id": format(span_context.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's `fields`, trace ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
            **_trace_fields(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _JSON.encode(entry)

    def formatTime(self, record: logging.LogRecord, datefmt=None) -> str:  # noqa: N802 - logging's name
        utc = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", utc) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """The classic one-line format, with the record's `fields` appended as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if not fields:
            return line
        pairs = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {pairs}{newline}{rest}"


def configure_logging(level: str, log_format: str = "auto") -> None:
    """Root logging on stderr: `json`, `text`, or `auto` (JSON unless stderr is a terminal, so containers
    and CI get JSON while a developer's shell reads text)."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _rounded(milliseconds: float | None) -> float | None:
    return None if milliseconds is None else round(milliseconds, 2)


@dataclass
class RequestRecord:
    """What the access line reports about one request; the batcher adds its part through `current_request`."""

    protocol: str  # rest | grpc
    service: str
    request_id: str
    method: str | None = None  # HTTP method; gRPC names the method in the route
    route: str = "unmatched"
    status: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    batcher: str | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    batch_size: int | None = None
    batches: int = 0  # model calls this request took part in (several for multi-part requests)
    started: float = field(default_factory=time.perf_counter)

    def add_batch_share(self, batcher: str, queue_s: float, compute_s: float | None, batch_size: int | None) -> None:
        """Times of one submit: queued time and compute add up over the submits of a request."""
        self.batcher = batcher
        self.service = batcher.split(".", 1)[0]
        self.queue_ms = (self.queue_ms or 0.0) + queue_s * 1000
        if compute_s is not None:
            self.compute_ms = (self.compute_ms or 0.0) + compute_s * 1000
            self.batch_size = max(self.batch_size or 0, batch_size or 0)
            self.batches += 1

    def fields(self) -> dict:
        return {
            "request_id": self.request_id,
            "service": self.service,
            "protocol": self.protocol,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "duration_ms": _rounded((time.perf_counter() - self.started) * 1000),
            "queue_ms": _rounded(self.queue_ms),
            "compute_ms": _rounded(self.compute_ms),
            "batch_size": self.batch_size,
            "batches": self.batches,
            "batcher": self.batcher,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }

    def log(self) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        summary = " ".join(str(part) for part in (self.method, self.route, self.status) if part)
        # makeRecord + handle is what info() does, without looking up the caller's file and line in the stack
        # (neither format prints them, and the caller is always this method).
        record = access_log.makeRecord(
            ACCESS_LOGGER, logging.INFO, __file__, 0, summary, (), None, extra={"fields": self.fields()}
        )
        access_log.handle(record)


# The request being served in this context, set by the REST middleware and the gRPC interceptor. The record
# is a mutable object, so tasks that copied the context (streamed responses) still report into it.
current_request: ContextVar[RequestRecord | None] = ContextVar("modelserve_request", default=None)
