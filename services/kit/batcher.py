"""Asyncio dynamic batcher: requests queue up, compatible ones run together in one model call.

Requests carry a batching key (for example a language pair plus generation settings); only requests
with the same key share a model call. The model runs in one worker thread per batcher, so a model
is never called concurrently and the event loop never blocks on compute.
"""

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import metrics
from .errors import Cancelled, DeadlineExceeded, Overloaded, Unavailable

log = logging.getLogger(__name__)

# How often a waiting request checks whether its HTTP client is still connected.
DISCONNECT_POLL_S = 0.1


@dataclass(eq=False)
class Work:
    """One request as the model runner sees it."""

    payload: Any
    key: Hashable
    enqueued_at: float
    deadline: float | None
    _future: asyncio.Future = field(repr=False)
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _events: asyncio.Queue | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once nobody waits for the result: client gone, deadline passed or server stopping.

        Safe to call from the worker thread; long-running runners check it between steps.
        """
        if self._future.done():
            return True
        return self.deadline is not None and time.monotonic() > self.deadline

    def emit(self, event: Any) -> None:
        """Send a progress event to a streaming caller (no-op for unary callers). Thread-safe."""
        if self._events is not None:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)


@dataclass(frozen=True)
class Done:
    """Last item of `DynamicBatcher.stream`: the request's result."""

    result: Any


PredictBatch = Callable[[list[Work]], Sequence[Any]]
Disconnected = Callable[[], Awaitable[bool]]


class DynamicBatcher:
    def __init__(
        self,
        name: str,
        predict_batch: PredictBatch,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        timeout_s: float = 60.0,
        retry_after_s: float = 1.0,
        executor: Executor | None = None,
    ):
        self.name = name
        self.predict_batch = predict_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._queue: collections.deque[Work] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # The thread predict_batch runs in: a service's model thread (Service.model_thread), else one of its own.
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._running = 0  # requests inside the current model call
        self._queue_depth = metrics.QUEUE_DEPTH.labels(batcher=name)

    # -- public API -------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self._running > 0

    async def submit(
        self,
        payload: Any,
        *,
        key: Hashable = None,
        timeout: float | None = None,
        disconnected: Disconnected | None = None,
    ) -> Any:
        """Queue one request and wait for its result.

        `timeout` (seconds) is the caller's deadline, e.g. a gRPC deadline; the batcher's own
        timeout applies when it is shorter. `disconnected` is polled while waiting so that a request
        whose HTTP client went away is dropped before compute.
        """
        work = self._enqueue(payload, key, timeout, events=None)
        return await self._wait(work, disconnected)

    async def stream(
        self,
        payload: Any,
        *,
        key: Hashable = None,
        timeout: float | None = None,
        disconnected: Disconnected | None = None,
    ) -> AsyncIterator[Any]:
        """Queue one request; yield the events the runner emits, then `Done(result)`."""
        events: asyncio.Queue = asyncio.Queue()
        work = self._enqueue(payload, key, timeout, events=events)
        waiter = asyncio.ensure_future(self._wait(work, disconnected))
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                yield Done(waiter.result())
                return
        finally:
            if not waiter.done():
                waiter.cancel()

    async def stop(self) -> None:
        """Fail whatever is still queued and stop the worker loop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            work = self._queue.popleft()
            if not work._future.done():
                work._future.set_exception(Unavailable("server is shutting down", retry_after=self.retry_after_s))
        self._queue_depth.set(0)

    # -- internals --------------------------------------------------------------------------

    def _enqueue(self, payload: Any, key: Hashable, timeout: float | None, events) -> Work:
        loop = asyncio.get_running_loop()
        self._ensure_running(loop)
        if len(self._queue) >= self.max_queue:
            metrics.REJECTED.labels(batcher=self.name, reason="queue_full").inc()
            raise Overloaded(
                f"{self.name}: {len(self._queue)} requests already queued; try again shortly",
                retry_after=self.retry_after_s,
            )
        budget = self.timeout_s if timeout is None else min(timeout, self.timeout_s)
        now = time.monotonic()
        work = Work(payload, key, now, now + budget, loop.create_future(), loop, events)
        self._queue.append(work)
        self._queue_depth.set(len(self._queue))
        self._wakeup.set()
        return work

    async def _wait(self, work: Work, disconnected: Disconnected | None) -> Any:
        try:
            while True:
                remaining = work.deadline - time.monotonic()
                if remaining <= 0:
                    metrics.REJECTED.labels(batcher=self.name, reason="deadline").inc()
                    raise DeadlineExceeded(f"{self.name}: request took longer than {self.timeout_s:g} s")
                poll = remaining if disconnected is None else min(remaining, DISCONNECT_POLL_S)
                done, _ = await asyncio.wait({work._future}, timeout=poll)
                if done:
                    return work._future.result()
                if disconnected is not None and await disconnected():
                    metrics.REJECTED.labels(batcher=self.name, reason="client_gone").inc()
                    raise Cancelled("client disconnected")
        finally:
            # Whatever ended the wait, mark the work so the loop skips it or the runner stops early.
            if not work._future.done():
                work._future.cancel()

    def _ensure_running(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run(), name=f"batcher-{self.name}")

    def _take_batch(self) -> list[Work]:
        """The oldest live request plus up to max_batch_size-1 queued ones with the same key."""
        while self._queue and self._queue[0].cancelled:
            self._drop(self._queue.popleft())
        if not self._queue:
            return []
        key = self._queue[0].key
        batch, rest = [], collections.deque()
        while self._queue:
            work = self._queue.popleft()
            if work.cancelled:
                self._drop(work)
            elif work.key == key and len(batch) < self.max_batch_size:
                batch.append(work)
            else:
                rest.append(work)
        self._queue = rest
        self._queue_depth.set(len(self._queue))
        return batch

    def _drop(self, work: Work) -> None:
        metrics.REJECTED.labels(batcher=self.name, reason="dropped_before_compute").inc()
        if not work._future.done():
            work._future.set_exception(DeadlineExceeded(f"{self.name}: request expired in the queue"))

    def _count_ready(self, key: Hashable) -> int:
        return sum(1 for w in self._queue if w.key == key and not w.cancelled)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Give concurrent requests a moment to join, unless a full batch is already waiting.
            key = self._queue[0].key
            if self.max_wait_s > 0 and self._count_ready(key) < self.max_batch_size:
                fill_until = loop.time() + self.max_wait_s
                while self._count_ready(key) < self.max_batch_size and loop.time() < fill_until:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), fill_until - loop.time())
                    except TimeoutError:
                        break
            batch = self._take_batch()
            if batch:
                await self._execute(batch, loop)

    async def _execute(self, batch: list[Work], loop: asyncio.AbstractEventLoop) -> None:
        started = time.monotonic()
        for work in batch:
            metrics.QUEUE_TIME.labels(batcher=self.name).observe(started - work.enqueued_at)
        metrics.BATCH_SIZE.labels(batcher=self.name).observe(len(batch))
        self._running = len(batch)
        try:
            results = await loop.run_in_executor(self._executor, self.predict_batch, batch)
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: runner returned {len(results)} results for {len(batch)} requests")
        except Exception as exc:  # the whole batch failed: every caller gets the error
            log.exception("batch of %d failed in %s", len(batch), self.name)
            results = [exc] * len(batch)
        finally:
            self._running = 0
        elapsed = time.monotonic() - started
        for work, result in zip(batch, results, strict=True):
            metrics.COMPUTE_TIME.labels(batcher=self.name).observe(elapsed)
            if work._future.done():
                continue
            if isinstance(result, BaseException):
                work._future.set_exception(result)
            else:
                work._future.set_result(result)
