"""Asyncio dynamic batcher: requests queue up, compatible ones run together in one model call.

Requests carry a batching key (for example a language pair plus generation settings); only requests
with the same key share a model call. Model calls run in the service's `ModelThread` (one per service, shared
by all its batchers; on CPU one for every service of the platform, see `compute`), so a model is never called
concurrently and the event loop never blocks on compute.
"""

import asyncio
import collections
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span

from . import logs, metrics, tracing
from .compute import ModelThread
from .errors import Cancelled, DeadlineExceeded, InvalidArgument, Overloaded, PayloadTooLarge, Unavailable

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
    cost: float = 1.0
    nbytes: int = 0
    _beat: Callable[[], None] | None = field(default=None, repr=False)
    _queued: Callable[[], int] | None = field(default=None, repr=False)
    # Filled in by the batcher for the access log and traces.
    batch_started_at: float | None = None
    batch_size: int | None = None
    compute_s: float | None = None
    spans: tracing.WorkSpans | None = field(default=None, repr=False)

    @property
    def span(self) -> Span:
        """This request's `model` span while the runner runs it: runners add events and attributes to it
        (decoding rounds, denoising steps). A no-op span when tracing is off."""
        if self.spans is None or self.spans.model is None:
            return INVALID_SPAN
        return self.spans.model

    @property
    def queue_depth(self) -> int:
        """Requests waiting behind this one's batch right now: a runner that trades latency for throughput
        (ASR's drafting, say) reads it between steps."""
        return self._queued() if self._queued is not None else 0

    @property
    def cancelled(self) -> bool:
        """True once nobody waits for the result: client gone, deadline passed or server stopping.

        Safe to call from the worker thread; long-running runners check it between steps, so each
        check also tells the liveness probe that the model thread is making progress.
        """
        if self._beat is not None:
            self._beat()
        if self._future.done():
            return True
        return self.deadline is not None and time.monotonic() > self.deadline

    def resolve(self, result: Any) -> None:
        """Hand the caller its result (an exception is raised to it), unless nobody waits any more."""
        if self._future.done():
            return
        if isinstance(result, BaseException):
            self._future.set_exception(result)
        else:
            self._future.set_result(result)

    def emit(self, event: Any) -> None:
        """Send a progress event to a streaming caller (no-op for unary callers). Thread-safe."""
        if self._events is not None:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)


@dataclass(frozen=True)
class Done:
    """Last item of `DynamicBatcher.stream`: the request's result."""

    result: Any


REJECTION_REASONS = (
    "queue_full", "queue_bytes", "over_budget", "deadline", "client_gone", "dropped_before_compute",
)
PredictBatch = Callable[[list[Work]], Sequence[Any]]
Disconnected = Callable[[], Awaitable[bool]]


def is_out_of_memory(exc: BaseException) -> bool:
    """Host MemoryError or an accelerator's out-of-memory error (torch.OutOfMemoryError), by name so the
    kit needs no framework import."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def _release_accelerator_memory() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class DynamicBatcher:
    def __init__(
        self,
        name: str,
        predict_batch: PredictBatch,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        wait_when_idle: bool = False,
        max_queue: int = 64,
        timeout_s: float = 60.0,
        retry_after_s: float = 1.0,
        max_request_cost: float | None = None,
        max_batch_cost: float | None = None,
        max_queued_bytes: int | None = None,
        cost_setting: str = "MAX_REQUEST_COST",
        executor: ModelThread | None = None,
        owner: str | None = None,
    ):
        self.name = name
        self.predict_batch = predict_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.wait_when_idle = wait_when_idle
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.max_request_cost = max_request_cost
        self.max_batch_cost = max_batch_cost
        self.max_queued_bytes = max_queued_bytes
        self.cost_setting = cost_setting  # named in the 400, so an operator knows what to raise
        self._queue: collections.deque[Work] = collections.deque()
        self._queued_bytes = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        # The thread predict_batch runs in: a service's model thread (Service.model_thread), else one of its own.
        self._executor = executor or ModelThread(f"model-{name}")
        self.owner = owner or name
        self._running: list[Work] = []  # requests inside the current model call
        self._batches = 0  # batches run so far: the batch id in traces
        self._last_beat = time.monotonic()
        self._loop_thread: int | None = None
        self._last_batch_size, self._last_batch_end = 0, float("-inf")
        self._queue_depth = metrics.QUEUE_DEPTH.labels(batcher=name)
        # Looked up once: labels() takes a lock and builds a key on every call, and these are observed per request.
        self._queue_time = metrics.QUEUE_TIME.labels(batcher=name)
        self._compute_time = metrics.COMPUTE_TIME.labels(batcher=name)
        self._batch_size = metrics.BATCH_SIZE.labels(batcher=name)
        # Counters exist from the start at 0, so the first refusals show up in rate() and alerts.
        for reason in REJECTION_REASONS:
            metrics.REJECTED.labels(batcher=name, reason=reason)

    # -- public API -------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def busy(self) -> bool:
        return bool(self._queue) or bool(self._running)

    def stalled_for(self) -> float:
        """Seconds the running batch has gone without a progress beat (0 while idle): for liveness."""
        if not self._running:
            return 0.0
        return time.monotonic() - self._last_beat

    def beat(self) -> None:
        """The model thread made progress (a step, a window, a check of `Work.cancelled`)."""
        self._last_beat = time.monotonic()

    def run_in(self, executor: ModelThread) -> None:
        """Run future batches in `executor` (a ModelThread shared with other services, say)."""
        self._executor = executor

    def _between_steps(self) -> None:
        """A runner checked `Work.cancelled` between two steps: progress, and a point to yield the thread."""
        if threading.get_ident() == self._loop_thread:
            return  # the queue's own checks, not the model's
        self._last_beat = time.monotonic()
        self._executor.yield_point()

    async def submit(
        self,
        payload: Any,
        *,
        key: Hashable = None,
        timeout: float | None = None,
        disconnected: Disconnected | None = None,
        cost: float = 1.0,
        nbytes: int = 0,
    ) -> Any:
        """Queue one request and wait for its result.

        `timeout` (seconds) is the caller's deadline, e.g. a gRPC deadline; the batcher's own
        timeout applies when it is shorter. `disconnected` is polled while waiting so that a request
        whose HTTP client went away is dropped before compute. `cost` (the service's unit of work)
        is checked against the request budget and summed against the batch cap; `nbytes` (the
        payload's size) counts against the queued-bytes budget.
        """
        work = self._enqueue(payload, key, timeout, events=None, cost=cost, nbytes=nbytes)
        return await self._wait(work, disconnected)

    async def stream(
        self,
        payload: Any,
        *,
        key: Hashable = None,
        timeout: float | None = None,
        disconnected: Disconnected | None = None,
        cost: float = 1.0,
        nbytes: int = 0,
    ) -> AsyncIterator[Any]:
        """Queue one request; yield the events the runner emits, then `Done(result)`."""
        events: asyncio.Queue = asyncio.Queue()
        work = self._enqueue(payload, key, timeout, events=events, cost=cost, nbytes=nbytes)
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
        """Answer everything still queued or running with 503 and stop the worker loop.

        Callers get a response instead of a dropped connection, and the running batch's requests
        read as cancelled, so runners that check between steps free the model thread at once.
        """
        self._stopping = True
        shutting_down = Unavailable("server is shutting down", retry_after=self.retry_after_s)
        for work in [*self._queue, *self._running]:
            if not work._future.done():
                work._future.set_exception(shutting_down)
        self._queue.clear()
        self._queued_bytes = 0
        self._queue_depth.set(0)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # -- internals --------------------------------------------------------------------------

    def admit(self, cost: float = 1.0, nbytes: int = 0) -> None:
        """Raise what `submit` would refuse this request with, without queuing it: for a streaming route
        that must answer errors before its response headers go out."""
        if self._stopping:
            raise Unavailable("server is shutting down", retry_after=self.retry_after_s)
        if self.max_request_cost is not None and cost > self.max_request_cost:
            metrics.REJECTED.labels(batcher=self.name, reason="over_budget").inc()
            raise InvalidArgument(
                f"request costs {cost:g} units of work; the budget per request is {self.max_request_cost:g} "
                f"({self.cost_setting}): send fewer or shorter inputs, or smaller generation settings",
                field="max_request_cost",
            )
        if len(self._queue) >= self.max_queue:
            metrics.REJECTED.labels(batcher=self.name, reason="queue_full").inc()
            raise Overloaded(
                f"{self.name}: {len(self._queue)} requests already queued; try again shortly",
                retry_after=self.retry_after_s,
            )
        # A lone request always fits: its size is bounded by the body limit, the budget by what waits.
        if self.max_queued_bytes is not None and self._queue and self._queued_bytes + nbytes > self.max_queued_bytes:
            metrics.REJECTED.labels(batcher=self.name, reason="queue_bytes").inc()
            raise Overloaded(
                f"{self.name}: {self._queued_bytes} bytes of requests already queued; try again shortly",
                retry_after=self.retry_after_s,
            )

    def _enqueue(self, payload: Any, key: Hashable, timeout: float | None, events, cost: float, nbytes: int) -> Work:
        self.admit(cost, nbytes)
        loop = asyncio.get_running_loop()
        self._ensure_running(loop)
        budget = self.timeout_s if timeout is None else min(timeout, self.timeout_s)
        now = time.monotonic()
        work = Work(payload, key, now, now + budget, loop.create_future(), loop, events, cost, nbytes,
                    self._between_steps, lambda: len(self._queue))
        work.spans = tracing.work_spans(self.name)
        self._queue.append(work)
        self._queued_bytes += nbytes
        self._queue_depth.set(len(self._queue))
        self._wakeup.set()
        return work

    def _unqueue(self, work: Work) -> None:
        """Take a request that nobody waits for out of the queue at once, so it holds no place or bytes."""
        try:
            self._queue.remove(work)
        except ValueError:
            return  # already taken into a batch
        self._queued_bytes -= work.nbytes
        self._queue_depth.set(len(self._queue))

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
                self._unqueue(work)
            self._report(work)

    def _report(self, work: Work) -> None:
        """The request's share of queue and compute, for its access line (and its queue span's end)."""
        if work.spans is not None:
            work.spans.leave_queue()
        record = logs.current_request.get()
        if record is not None:
            waited = (work.batch_started_at or time.monotonic()) - work.enqueued_at
            record.add_batch_share(self.name, waited, work.compute_s, work.batch_size)

    def _ensure_running(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_thread = threading.get_ident()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            # A fresh context: the loop serves every request, so it must not keep the first one's (its span).
            self._task = loop.create_task(self._run(), name=f"batcher-{self.name}", context=contextvars.Context())

    def _take_batch(self) -> list[Work]:
        """The oldest live request plus up to max_batch_size-1 queued ones with the same key, within the
        batch's cost cap."""
        self._drop_expired_head()
        if not self._queue:
            return []
        key = self._queue[0].key
        batch, rest = [], collections.deque()
        batch_cost = 0.0
        while self._queue:
            work = self._queue.popleft()
            if work.cancelled:
                self._drop(work)
            elif work.key == key and len(batch) < self.max_batch_size and self._fits(bool(batch), batch_cost, work):
                batch.append(work)
                batch_cost += work.cost
            else:
                rest.append(work)
        self._queue = rest
        self._queue_taken()
        return batch

    def _drop_expired_head(self) -> None:
        """Drop the requests at the head of the queue that nobody waits for any more."""
        while self._queue and self._queue[0].cancelled:
            self._drop(self._queue.popleft())

    def _queue_taken(self) -> None:
        """Requests left the queue for a model call: recount what waits."""
        self._queued_bytes = sum(work.nbytes for work in self._queue)
        self._queue_depth.set(len(self._queue))

    def _fits(self, occupied: bool, batch_cost: float, work: Work) -> bool:
        """Whether `work` fits the batch cost cap next to `batch_cost` (a lone request always fits)."""
        return not occupied or self.max_batch_cost is None or batch_cost + work.cost <= self.max_batch_cost

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
            await self._run_next(loop)

    async def _run_next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the next batch from the (non-empty) queue."""
        # An idle model starts a lone request at once. While it is busy (with another batcher's call),
        # requests that arrive get a moment to join, unless a full batch is already waiting; right after
        # a batch of N, they get a moment for its N clients to come back with their next requests
        # (closed-loop callers), so batches stay full instead of alternating 1 and N-1.
        key = self._queue[0].key
        target = self._fill_target(loop)
        if self.max_wait_s > 0 and self._count_ready(key) < target:
            fill_until = loop.time() + self.max_wait_s
            while self._count_ready(key) < target and loop.time() < fill_until:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), fill_until - loop.time())
                except TimeoutError:
                    break
        batch = self._take_batch()
        if batch:
            await self._execute(batch, loop)

    def _predict(self, batch: list[Work]) -> Sequence[Any]:
        """predict_batch in the model thread; a batch that runs out of memory is re-run one request at a
        time, so only the request that does not fit alone fails (413) and the others get their results."""
        try:
            results = self._call_runner(batch)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            _release_accelerator_memory()
            if len(batch) == 1:
                log.warning("%s: a request ran out of memory on its own", self.name)
                return [self._too_large()]
            log.warning("%s: a batch of %d ran out of memory; running its requests one by one", self.name, len(batch))
            return [self._predict_alone(work) for work in batch]
        if len(results) != len(batch):
            raise RuntimeError(f"{self.name}: runner returned {len(results)} results for {len(batch)} requests")
        return results

    def _call_runner(self, batch: list[Work]) -> Sequence[Any]:
        """predict_batch inside each traced request's `model` span (a re-run after running out of memory gets
        a span of its own)."""
        traced = [work.spans for work in batch if work.spans is not None]
        for spans in traced:
            spans.start_model()
        try:
            results = self.predict_batch(batch)
        except BaseException as exc:
            for spans in traced:
                spans.end_model(exc)
            raise
        for position, work in enumerate(batch):
            if work.spans is not None:
                work.spans.end_model(results[position] if position < len(results) else None)
        return results

    def _too_large(self) -> PayloadTooLarge:
        """What a request gets that runs out of memory on its own."""
        return PayloadTooLarge(
            f"{self.name}: this request needs more memory than the server has; send fewer or smaller inputs"
        )

    def _predict_alone(self, work: Work) -> Any:
        try:
            return self._predict([work])[0]
        except Exception as exc:  # this request's own error, not its neighbours'
            return exc

    def _fill_target(self, loop: asyncio.AbstractEventLoop) -> int:
        """How many requests are worth a max_wait_ms wait before the next batch starts (1: none)."""
        if self.wait_when_idle or self._model_busy():
            return self.max_batch_size
        if loop.time() - self._last_batch_end < self.max_wait_s:
            return min(self._last_batch_size, self.max_batch_size)
        return 1

    def _model_busy(self) -> bool:
        return self._executor.busy or self._executor.waiting > 0

    async def _execute(self, batch: list[Work], loop: asyncio.AbstractEventLoop) -> None:
        started = time.monotonic()
        self._batches += 1
        for position, work in enumerate(batch):
            self._queue_time.observe(started - work.enqueued_at)
            work.batch_started_at, work.batch_size = started, len(batch)
            if work.spans is not None:
                work.spans.start_batch(self._batches, len(batch), position)
        self._batch_size.observe(len(batch))
        self._running = batch
        self.beat()
        results: Sequence[Any] | None = None
        future = None
        try:
            future = self._executor.run(self.owner, self._predict, batch)
            results = await asyncio.wrap_future(future)
        except Exception as exc:  # the whole batch failed: every caller gets the error
            log.exception("batch of %d failed in %s", len(batch), self.name)
            results = [exc] * len(batch)
        finally:
            self._running = []
            self._last_batch_size, self._last_batch_end = len(batch), loop.time()
            # Model time: what the model thread spent on this batch (a shared thread may first finish another
            # service's call, or lend time to one inline); the wall time if the call never ran.
            elapsed = getattr(future, "model_s", None) or time.monotonic() - started
            self._batch_ended(batch, results, elapsed)
        for work, result in zip(batch, results, strict=True):
            self._compute_time.observe(elapsed)
            work.resolve(result)

    def _batch_ended(self, batch: list[Work], results: Sequence[Any] | None, elapsed: float) -> None:
        """Compute time for the access log; the batch spans end, also when the loop stops mid-batch."""
        stopped = Unavailable("server is shutting down")
        for position, work in enumerate(batch):
            work.compute_s = elapsed
            if work.spans is not None and work.spans.batch is not None:
                work.spans.end_batch(stopped if results is None else results[position])
