"""Helpers for tests and benchmarks: a real server (REST + gRPC on loopback) in a background thread, a `Work`
outside any batcher, and the word error rate of a transcript."""

import asyncio
import re
import threading
import time
from collections.abc import Callable

from .batcher import Work
from .config import ServiceSettings
from .launch import free_port
from .server import serve
from .service import Service
from .state import ServerState


def standalone_work(payload, key=None, loop: asyncio.AbstractEventLoop | None = None) -> Work:
    """A `Work` outside any batcher, for driving a runner's predict_batch or decode loop directly in tests:
    never cancelled until its future is cancelled, no deadline, emitted events go nowhere."""
    loop = loop or asyncio.new_event_loop()
    return Work(
        payload=payload,
        key=key,
        enqueued_at=time.monotonic(),
        deadline=None,
        _future=loop.create_future(),
        _loop=loop,
    )


class ServerThread:
    """`with ServerThread(lambda: [create_service(settings)], settings) as server: server.rest_url ...`

    Picks free ports, starts `serve` on its own event loop, waits until ready (models loaded and
    warmed up), and on exit drains exactly like SIGTERM would.
    """

    def __init__(
        self,
        create_services: Callable[[], list[Service]],
        settings: ServiceSettings,
        ready_timeout: float = 300,
    ):
        settings.host = "127.0.0.1"
        settings.rest_port = free_port()
        settings.grpc_port = free_port()
        self.settings = settings
        self.create_services = create_services
        self.ready_timeout = ready_timeout
        self.state: ServerState | None = None
        self.services: list[Service] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.settings.grpc_port}"

    def _main(self) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.state = ServerState()
            self.services = self.create_services()
            await serve(self.services, self.settings, stop=self._stop, state=self.state)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by start()/stop()
            self._error = exc

    def start(self) -> "ServerThread":
        self._thread = threading.Thread(target=self._main, name="test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.ready_timeout
        while not (self.state and self.state.serving):
            if self._error or not self._thread.is_alive():
                raise RuntimeError("server failed to start") from self._error
            if time.monotonic() > deadline:
                raise TimeoutError("server did not become ready")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(timeout=self.settings.shutdown_grace_s + 30)
        if self._error:
            raise RuntimeError("server failed") from self._error

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def words(text: str) -> list[str]:
    """Lower-cased words without punctuation (no number normalisation: "forty" vs "40" counts as an error)."""
    return re.sub(r"[^\w\s']", " ", text.lower().replace("-", " ")).split()


def word_alignment(reference: str, hypothesis: str) -> tuple[int, int, int]:
    """(substituted, deleted, inserted) words of the cheapest word alignment (Levenshtein over `words`)."""
    ref, hyp = words(reference), words(hypothesis)
    # previous[j]: (edits, substitutions, deletions, insertions) aligning ref[:i-1] with hyp[:j]
    previous = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i, r in enumerate(ref, 1):
        row = [(i, 0, i, 0)]
        for j, h in enumerate(hyp, 1):
            diagonal, up, left = previous[j - 1], previous[j], row[j - 1]
            row.append(
                min(
                    (diagonal[0] + (r != h), diagonal[1] + (r != h), diagonal[2], diagonal[3]),
                    (up[0] + 1, up[1], up[2] + 1, up[3]),
                    (left[0] + 1, left[1], left[2], left[3] + 1),
                )
            )
        previous = row
    return previous[-1][1:]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word errors (substituted + deleted + inserted) per reference word."""
    return sum(word_alignment(reference, hypothesis)) / max(1, len(words(reference)))
