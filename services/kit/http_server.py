"""uvicorn's h11 protocol with a deadline on every request head and a bound on open connections.

uvicorn alone times out nothing before a request head is complete (its keep-alive timer starts only after a
response, and any byte received cancels it), and its `limit_concurrency` counts open connections, so idle,
half-sent connections made every request, the probes included, a 503. Here a connection that is not serving
a request has `header_timeout_s` to send a complete head, admission of work stays with the kit's
ServingMiddleware, and open connections are bounded on their own.

The h11 protocol is named explicitly (not uvicorn's "auto"): it is the one installed, and "auto" would switch
to httptools, whose protocol this subclass does not cover, whenever something installs uvicorn[standard].
"""

import asyncio
import json
import logging
import resource

from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import RequestTimeout

log = logging.getLogger(__name__)

# REST and gRPC each get at most this share of the open-file limit; model files, logs and the rest keep theirs.
CONNECTION_SHARE_OF_OPEN_FILES = 3


class ConnectionGuard:
    """What the connections of one REST server share: the bound, the head deadline, and the connections now
    waiting for a request head, oldest first (the ones to close first when the bound is reached)."""

    def __init__(self, max_connections: int, header_timeout_s: float):
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        # Sent when part of a head came but not all of it in time (written raw: h11 answers only whole requests).
        error = RequestTimeout(f"request head not complete within {header_timeout_s:g} s")
        body = json.dumps(error.body()).encode()
        self.head_timeout_response = (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.open: set[GuardedH11Protocol] = set()
        self.awaiting_head: dict[GuardedH11Protocol, None] = {}

    def admit(self, connection: "GuardedH11Protocol") -> None:
        """Beyond the bound, close the connection that has waited longest for a head: a probe or a client that
        sends at once is never the oldest, so a flood of idle connections cannot shut it out. When every
        connection is serving a request, the new one is closed instead."""
        self.open.add(connection)
        if len(self.open) <= self.max_connections:
            return
        oldest = next(iter(self.awaiting_head), connection)
        log.debug("%d connections open, the limit: closing one waiting for its request head", len(self.open) - 1)
        oldest.close_waiting()

    def forget(self, connection: "GuardedH11Protocol") -> None:
        self.open.discard(connection)
        self.awaiting_head.pop(connection, None)


class GuardedH11Protocol(H11Protocol):
    """Subclassed per server by `guarded_h11`, which sets `guard`."""

    guard: ConnectionGuard

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timer: asyncio.TimerHandle | None = None
        # The request answered last: a different self.cycle means a new request head arrived.
        self.answered_cycle = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.await_head()
        self.guard.admit(self)

    def connection_lost(self, exc) -> None:
        self.stop_head_timer()
        self.guard.forget(self)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self.answered_cycle:
            self.stop_head_timer()

    def on_response_complete(self) -> None:
        # Armed before uvicorn looks at pipelined data, which may hold the next head already.
        self.answered_cycle = self.cycle
        if not self.transport.is_closing():
            self.await_head()
        super().on_response_complete()

    def await_head(self) -> None:
        self.stop_head_timer()
        self.head_timer = self.loop.call_later(self.guard.header_timeout_s, self.close_waiting)
        self.guard.awaiting_head[self] = None

    def stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self.guard.awaiting_head.pop(self, None)

    def close_waiting(self) -> None:
        """Close a connection that has no request in progress (timed out, or evicted at the bound)."""
        self.stop_head_timer()
        if self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:
            self.transport.write(self.guard.head_timeout_response)
        self.transport.close()


def guarded_h11(max_connections: int, header_timeout_s: float) -> type[GuardedH11Protocol]:
    """The protocol class for one uvicorn server (`uvicorn.Config(http=...)`), with its own ConnectionGuard."""
    guard = ConnectionGuard(max_connections, header_timeout_s)
    return type("ServerH11Protocol", (GuardedH11Protocol,), {"guard": guard})


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (any process may) and return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft if soft != resource.RLIM_INFINITY else 2**20


def connection_bound(max_connections: int, open_file_limit: int) -> int:
    """max_connections, lowered to fit the open-file limit beside the other protocol and everything else."""
    fitting = max(1, open_file_limit // CONNECTION_SHARE_OF_OPEN_FILES)
    if fitting < max_connections:
        log.warning(
            "max_connections %d lowered to %d: the open-file limit is %d", max_connections, fitting, open_file_limit
        )
        return fitting
    return max_connections
