"""Iteration-level (continuous) batching for autoregressive decoders.

A whole-request batch runs until its longest member finishes, and requests that arrive meanwhile wait for all
of it. Here a running decode takes new requests of its batch key at the next step and hands each result back
the step it finishes, each sequence with its own cache slot. A runner opts in with a `StepDecoder`; requests it
cannot decode step by step (beam search, say) run whole-request through its `predict_batch` as before.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Hashable
from typing import Any, Protocol

from . import metrics
from .batcher import (
    DynamicBatcher,
    PredictBatch,
    Work,
    _release_accelerator_memory,
    is_out_of_memory,
)
from .errors import Cancelled, DeadlineExceeded, Overloaded

log = logging.getLogger(__name__)


class DecodeLoop(Protocol):
    """A running decode for one batch key. It lives in the model thread: the event loop never touches it."""

    def join(self, works: list[Work]) -> None:
        """Prefill new works (encode, cross-attention keys and values, prompt) into free slots, all or none: when
        it raises, none of them joined, and the batcher joins them one by one so only a work that cannot join
        fails."""

    def step(self) -> list[tuple[Work, Any]]:
        """One decoding step for every running sequence: the works that finished in it, each with its result
        (what the runner's predict_batch returns for that work, or an Exception)."""

    def leave(self, work: Work) -> None:
        """Drop a work nobody waits for any more (client gone, deadline passed) and free its slots."""


class StepDecoder(Protocol):
    """What a runner offers the batcher for continuous batching."""

    def open_loop(self, key: Hashable, payload: Any, waiting: int = 1) -> DecodeLoop | None:
        """A new, empty decode loop for requests with this batch key, or None when such requests are not
        decoded step by step: they then run whole-request through predict_batch. `waiting` counts the queued
        requests, this one included (a runner with a faster path for a lone request may keep it for that)."""

    def rows(self, payload: Any) -> int:
        """Sequences the job decodes at once: the batcher keeps at most max_batch_size rows running (a lone
        larger job still runs)."""


# Steps one model-thread call may run back to back while nothing finishes, arrives or leaves: fewer round trips
# through the event loop, while a time slice keeps the queue's joiners and the other services' turns close.
STEPS_PER_CALL = 32
CALL_SLICE_S = 0.05


class ContinuousBatcher(DynamicBatcher):
    """A `DynamicBatcher` whose step-decodable requests run in decode loops that take newcomers between steps.

    The oldest waiting request decides the key: when the decoder opens a loop for it, requests of that key join
    the loop at its next step while they keep arriving (up to max_batch_size rows and the batch cost cap), and
    each leaves with its result the step it finishes. Requests of another key wait until the loop drains, so
    no key starves another. Requests the decoder declines run as whole-request batches, as in DynamicBatcher.
    """

    def __init__(self, name: str, predict_batch: PredictBatch, decoder: StepDecoder, **options):
        super().__init__(name, predict_batch, **options)
        self.decoder = decoder
        self._decoding_key: Hashable | None = None
        self._decoding = False
        # Set from the event loop when a request that could join arrives; read between steps in the model thread.
        self._arrived = threading.Event()

    def _enqueue(self, payload, key, timeout, events, cost, nbytes) -> Work:
        work = super()._enqueue(payload, key, timeout, events, cost, nbytes)
        if self._decoding and key == self._decoding_key:
            self._arrived.set()
        return work

    async def _run_next(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drop_expired_head()
        if not self._queue:
            return
        head = self._queue[0]
        try:
            decode = await asyncio.wrap_future(
                self._executor.run(
                    self.owner, self.decoder.open_loop, head.key, head.payload, len(self._queue)
                )
            )
        except Exception as exc:  # the request that cannot be decoded gets the error, the queue goes on
            log.exception("%s: opening a decode loop failed", self.name)
            self._unqueue(head)
            head.resolve(exc)
            return
        if not self._queue or self._queue[0] is not head:
            return  # the request left (or the server stopped) while the loop opened: decide afresh
        if decode is None:
            await super()._run_next(loop)
            return
        self._decoding_key, self._decoding = head.key, True
        try:
            await self._decode(decode, head.key)
        finally:
            self._decoding, self._decoding_key = False, None
            self._running = []

    # -- the decode loop ---------------------------------------------------------------------------------------

    def _take_joiners(self, key: Hashable, rows: int, cost: float) -> dict[Work, int]:
        """Waiting requests that join now, with their rows: oldest first while they have the running key and
        fit."""
        self._arrived.clear()
        joiners: dict[Work, int] = {}
        while True:
            self._drop_expired_head()
            if not self._queue or self._queue[0].key != key:
                break  # the oldest waiting request is of another key: let the loop drain for it
            work = self._queue[0]
            work_rows = self.decoder.rows(work.payload)
            occupied = rows > 0 or bool(joiners)
            if (occupied and rows + work_rows > self.max_batch_size) or not self._fits(occupied, cost, work):
                break
            joiners[self._queue.popleft()] = work_rows
            rows, cost = rows + work_rows, cost + work.cost
        self._queue_taken()
        return joiners

    async def _decode(self, decode: DecodeLoop, key: Hashable) -> None:
        running: dict[Work, int] = {}  # work -> its rows
        while True:
            rows, cost = sum(running.values()), sum(work.cost for work in running)
            joiners = self._take_joiners(key, rows, cost)
            leavers = [work for work in running if work.cancelled]
            for work in leavers:
                del running[work]
                self._finish(work, self._left(work))
            if not running and not joiners:
                if leavers:
                    await asyncio.wrap_future(self._executor.run(self.owner, self._leave, decode, leavers))
                return
            self._batches += 1
            started = time.monotonic()
            for work, work_rows in joiners.items():
                running[work] = work_rows
                self._start(work, started, sum(running.values()))
            self._running = list(running)
            self.beat()
            future = self._executor.run(
                self.owner, self._advance, decode, list(joiners), leavers, list(running)
            )
            try:
                failed, finished = await asyncio.wrap_future(future)
            except Exception as exc:  # a step failed: every running request gets the error, the loop ends
                log.exception("%s: a decode step of %d requests failed", self.name, len(running))
                error = self._step_error(exc, len(running))
                self._finish_all(running, error, time.monotonic() - started)
                return
            elapsed = getattr(future, "model_s", None) or time.monotonic() - started
            for work in running:
                work.compute_s = (work.compute_s or 0.0) + elapsed
            for work, result in [*failed, *finished]:
                running.pop(work, None)
                self._finish(work, result)

    def _advance(
        self, decode: DecodeLoop, joiners: list[Work], leavers: list[Work], running: list[Work]
    ) -> tuple[list[tuple[Work, Any]], list[tuple[Work, Any]]]:
        """In the model thread: leavers leave, joiners join, then steps until a request finishes, one arrives
        or leaves, or the call's time slice ends. Returns (joiners that failed, finished) with their results."""
        self._leave(decode, leavers)
        failed = self._join(decode, joiners)
        stepping = {work for work in running if work not in dict(failed)}
        finished: list[tuple[Work, Any]] = []
        if not stepping:
            return failed, finished
        until = time.monotonic() + CALL_SLICE_S
        for _ in range(STEPS_PER_CALL):
            finished = decode.step()
            if finished or self._arrived.is_set() or time.monotonic() > until:
                break
            if any(work.cancelled for work in stepping):  # also the step's beat and yield point
                break
        return failed, finished

    @staticmethod
    def _leave(decode: DecodeLoop, leavers: list[Work]) -> None:
        for work in leavers:
            decode.leave(work)

    def _join(self, decode: DecodeLoop, joiners: list[Work]) -> list[tuple[Work, Any]]:
        """Join all at once; if that fails, one by one, so only a request that cannot join fails."""
        if not joiners:
            return []
        try:
            decode.join(joiners)
            return []
        except Exception as exc:
            if len(joiners) == 1:
                return [(joiners[0], self._join_error(exc))]
        failed = []
        for work in joiners:
            try:
                decode.join([work])
            except Exception as exc:
                failed.append((work, self._join_error(exc)))
        return failed

    def _left(self, work: Work) -> Exception:
        """What a request that left the decode gets: its caller is gone, or its deadline passed (504)."""
        if work._future.done():
            return Cancelled("client disconnected")
        metrics.REJECTED.labels(batcher=self.name, reason="deadline").inc()
        return DeadlineExceeded(f"{self.name}: request took longer than its deadline")

    def _join_error(self, exc: Exception) -> Exception:
        if is_out_of_memory(exc):
            _release_accelerator_memory()
            log.warning("%s: a request ran out of memory joining a decode", self.name)
            return self._too_large()
        log.warning("%s: a request could not join a decode: %r", self.name, exc)
        return exc

    def _step_error(self, exc: Exception, running: int) -> Exception:
        if is_out_of_memory(exc):
            _release_accelerator_memory()
            return Overloaded(
                f"{self.name}: {running} running requests ran out of memory; try again shortly",
                retry_after=self.retry_after_s,
            )
        return exc

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def _start(self, work: Work, started: float, rows: int) -> None:
        self._queue_time.observe(started - work.enqueued_at)
        self._batch_size.observe(rows)
        work.batch_started_at, work.batch_size, work.compute_s = started, rows, 0.0
        if work.spans is not None:
            work.spans.start_batch(self._batches, rows, 0)
            work.spans.start_model()

    def _finish(self, work: Work, result: Any) -> None:
        self._compute_time.observe(work.compute_s or 0.0)
        if work.spans is not None:
            work.spans.end_model(result)
            if work.spans.batch is not None:
                work.spans.end_batch(result)
        work.resolve(result)

    def _finish_all(self, running: dict[Work, int], error: Exception, elapsed: float) -> None:
        for work in running:
            work.compute_s = (work.compute_s or 0.0) + elapsed
            self._finish(work, error)
