"""The dynamic batcher: grouping, order, limits, deadlines, cancellation, streaming."""

import asyncio
import threading
import time

import pytest

from services.kit.batcher import Done, DynamicBatcher
from services.kit.errors import DeadlineExceeded, InvalidArgument, Overloaded, PayloadTooLarge, Unavailable


class RecordingRunner:
    """Doubles each payload and records the batches it was called with."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.batches: list[list] = []
        self.started = threading.Event()

    def __call__(self, works):
        self.started.set()
        self.batches.append([w.payload for w in works])
        time.sleep(self.delay)
        return [w.payload * 2 for w in works]


async def test_concurrent_requests_share_a_batch_and_get_their_own_results():
    runner = RecordingRunner()
    batcher = DynamicBatcher("t", runner, max_batch_size=4, max_wait_ms=50, wait_when_idle=True)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * 2 for i in range(10)]
    assert max(len(b) for b in runner.batches) == 4
    assert [p for b in runner.batches for p in b] == list(range(10)), "FIFO order across batches"
    await batcher.stop()


async def test_only_requests_with_the_same_key_are_batched_together():
    runner = RecordingRunner()
    batcher = DynamicBatcher("t", runner, max_batch_size=8, max_wait_ms=30, wait_when_idle=True)
    keys = ["a", "b", "a", "b", "a"]
    await asyncio.gather(*(batcher.submit(i, key=k) for i, k in enumerate(keys)))
    assert sorted(map(sorted, runner.batches)) == [[0, 2, 4], [1, 3]]
    await batcher.stop()


async def test_full_queue_is_refused_with_retry_after():
    runner = RecordingRunner(delay=0.3)
    batcher = DynamicBatcher("t", runner, max_batch_size=1, max_wait_ms=0, max_queue=2, retry_after_s=3)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)  # the first request is computing; the next two fill the queue
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as refused:
        await batcher.submit(3)
    assert refused.value.headers() == {"Retry-After": "3"}
    assert await asyncio.gather(first, *queued) == [0, 2, 4], "accepted requests still complete"
    await batcher.stop()


async def test_request_past_its_deadline_gets_deadline_exceeded_and_is_never_computed():
    runner = RecordingRunner(delay=0.3)
    batcher = DynamicBatcher("t", runner, max_batch_size=1, max_wait_ms=0)
    busy = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(2, timeout=0.1)
    assert await busy == 2
    await asyncio.sleep(0.05)
    assert [2] not in runner.batches
    await batcher.stop()


async def test_request_whose_client_went_away_is_dropped_before_compute():
    runner = RecordingRunner(delay=0.3)
    batcher = DynamicBatcher("t", runner, max_batch_size=1, max_wait_ms=0)
    busy = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.05)
    gone = asyncio.ensure_future(batcher.submit(99))
    await asyncio.sleep(0.05)
    gone.cancel()  # what grpc.aio does to the handler when the client cancels
    assert await busy == 2
    assert await batcher.submit(3) == 6
    assert [99] not in runner.batches
    await batcher.stop()


async def test_disconnect_poll_drops_the_request():
    runner = RecordingRunner(delay=0.3)
    batcher = DynamicBatcher("t", runner, max_batch_size=1, max_wait_ms=0)
    busy = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.05)

    async def disconnected():
        return True

    with pytest.raises(Exception, match="disconnected"):
        await batcher.submit(99, disconnected=disconnected)
    await busy
    assert [99] not in runner.batches
    await batcher.stop()


async def test_runner_can_fail_a_single_request_without_failing_its_batch_mates():
    def runner(works):
        return [InvalidArgument("odd") if w.payload % 2 else w.payload for w in works]

    batcher = DynamicBatcher("t", runner, max_batch_size=4, max_wait_ms=20, wait_when_idle=True)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], InvalidArgument) and isinstance(results[3], InvalidArgument)
    await batcher.stop()


async def test_stream_yields_runner_events_then_the_result():
    def runner(works):
        for work in works:
            for step in range(3):
                work.emit({"step": step})
        return ["final" for _ in works]

    batcher = DynamicBatcher("t", runner, max_batch_size=1, max_wait_ms=0)
    items = [item async for item in batcher.stream("x")]
    assert items == [{"step": 0}, {"step": 1}, {"step": 2}, Done("final")]
    await batcher.stop()


async def test_runner_sees_cancellation_and_can_stop_early():
    # Ordered by events, not by racing the clock: however slow the machine, the runner takes at least one
    # step and returns only after the caller has its error, so a late result cannot beat the deadline.
    step_cap = 1000  # at least 10 s of steps: far past the 0.1 s deadline
    steps_done = []
    runner_stopped, caller_gave_up = threading.Event(), threading.Event()

    def runner(works):
        work = works[0]
        for step in range(step_cap):
            steps_done.append(step)
            time.sleep(0.01)
            if work.cancelled:
                break
        runner_stopped.set()
        caller_gave_up.wait(60)
        return ["partial"]

    batcher = DynamicBatcher("t", runner, max_batch_size=1, max_wait_ms=0)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit("x", timeout=0.1)
    caller_gave_up.set()
    assert await asyncio.to_thread(runner_stopped.wait, 120)
    assert len(steps_done) < step_cap, "compute stopped once the caller's deadline passed"
    await batcher.stop()


async def test_a_request_over_the_cost_budget_is_refused_before_queuing():
    runner = RecordingRunner()
    batcher = DynamicBatcher("t", runner, max_request_cost=10, cost_setting="T_MAX_REQUEST_COST")
    with pytest.raises(InvalidArgument) as refused:
        await batcher.submit(1, cost=11)
    assert "T_MAX_REQUEST_COST" in refused.value.message and "11" in refused.value.message
    assert runner.batches == []
    assert await batcher.submit(2, cost=10) == 4
    await batcher.stop()


async def test_a_batch_stops_taking_requests_at_its_cost_cap_but_a_lone_one_always_runs():
    runner = RecordingRunner(delay=0.05)
    batcher = DynamicBatcher("t", runner, max_batch_size=8, max_wait_ms=30, wait_when_idle=True, max_batch_cost=10)
    results = await asyncio.gather(*(batcher.submit(i, cost=4) for i in range(5)), batcher.submit(9, cost=25))
    assert results == [0, 2, 4, 6, 8, 18]
    assert [len(b) for b in runner.batches] == [2, 2, 1, 1], "2 x 4 fit under 10, the 25 alone"
    await batcher.stop()


async def test_queued_bytes_are_budgeted_and_a_cancelled_request_frees_its_place_at_once():
    runner = RecordingRunner(delay=0.3)
    batcher = DynamicBatcher("t", runner, max_batch_size=1, max_wait_ms=0, max_queue=2, max_queued_bytes=1000)
    running = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.05)  # the model is busy with it
    queued = asyncio.ensure_future(batcher.submit(1, nbytes=800))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await batcher.submit(2, nbytes=300)
    queued.cancel()  # the client went away
    await asyncio.sleep(0.01)
    assert batcher.queue_depth == 0 and batcher.queued_bytes == 0
    assert await batcher.submit(3, nbytes=900) == 6
    assert await running == 0
    await batcher.stop()


class OutOfMemoryError(RuntimeError):
    """Named like torch.OutOfMemoryError, which the batcher recognises by name."""


async def test_a_batch_out_of_memory_reruns_one_by_one_and_only_the_culprit_fails():
    calls = []

    def runner(works):
        calls.append([w.payload for w in works])
        if len(works) > 1 or works[0].payload == "huge":
            raise OutOfMemoryError("CUDA out of memory")
        return [w.payload.upper() for w in works]

    batcher = DynamicBatcher("t", runner, max_batch_size=4, max_wait_ms=30, wait_when_idle=True)
    results = await asyncio.gather(*(batcher.submit(p) for p in ("a", "huge", "b")), return_exceptions=True)
    assert results[0] == "A" and results[2] == "B"
    assert isinstance(results[1], PayloadTooLarge) and "memory" in results[1].message
    assert calls[0] == ["a", "huge", "b"] and calls[1:] == [["a"], ["huge"], ["b"]]
    assert await batcher.submit("c") == "C", "still serving"
    await batcher.stop()


async def test_stop_answers_the_running_batch_and_its_runner_sees_it_cancelled():
    seen_cancelled = threading.Event()

    def runner(works):
        ends = time.monotonic() + 5
        while time.monotonic() < ends:
            if works[0].cancelled:
                seen_cancelled.set()
                break
            time.sleep(0.01)
        return [w.payload for w in works]

    batcher = DynamicBatcher("t", runner, max_batch_size=1, max_wait_ms=0)
    running = asyncio.ensure_future(batcher.submit("long"))
    queued = asyncio.ensure_future(batcher.submit("queued"))
    await asyncio.sleep(0.1)
    assert batcher.stalled_for() < 0.1, "checking Work.cancelled is a progress beat"
    await batcher.stop()
    for call in (running, queued):
        with pytest.raises(Unavailable):
            await call
    assert await asyncio.to_thread(seen_cancelled.wait, 1)
    with pytest.raises(Unavailable):
        await batcher.submit("after")
