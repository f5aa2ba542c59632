"""Process lifecycle shared by REST and gRPC: loading -> ready -> draining."""

import asyncio
from collections.abc import Callable


class ServerState:
    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def serving(self) -> bool:
        """What /readyz and the gRPC health service report."""
        return self.ready and not self.draining

    def on_change(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    def mark_ready(self) -> None:
        self.ready = True
        self._notify()

    def start_draining(self) -> None:
        self.draining = True
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self.serving)

    def request_started(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False when the timeout passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
