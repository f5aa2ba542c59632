"""The continuous batcher: requests join a running decode between steps and leave the step they finish."""

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest

from services.kit.batcher import Done
from services.kit.continuous import ContinuousBatcher
from services.kit.errors import Cancelled, DeadlineExceeded, Unavailable

STEP_S = 0.004


@dataclass(frozen=True)
class Job:
    """Decodes `length` tokens: token i of job `name` is f"{name}{i}". `rows` sequences at once."""

    name: str
    length: int
    rows: int = 1
    fail_join: bool = False


class CountingDecoder:
    """A step decoder with a log of what happened, in order; keys starting with "beam" are not step-decodable."""

    def __init__(self):
        self.log: list[tuple] = []
        self.loops = 0
        self.whole_batches: list[list[str]] = []
        self.fail_step = False
        self.thread_names: set[str] = set()

    def open_loop(self, key, payload, waiting=1):
        if str(key).startswith("beam"):
            return None
        self.loops += 1
        return CountingLoop(self)

    def rows(self, payload: Job) -> int:
        return payload.rows

    def predict_batch(self, works):
        self.whole_batches.append([work.payload.name for work in works])
        return [[f"{w.payload.name}{i}" for i in range(w.payload.length)] for w in works]


class CountingLoop:
    def __init__(self, decoder: CountingDecoder):
        self.decoder = decoder
        self.tokens: dict = {}

    def join(self, works):
        if any(work.payload.fail_join for work in works):
            raise ValueError("this job cannot join")
        for work in works:
            self.tokens[work] = []
            self.decoder.log.append(("join", work.payload.name))

    def step(self):
        self.decoder.thread_names.add(threading.current_thread().name)
        if self.decoder.fail_step:
            raise RuntimeError("step failed")
        time.sleep(STEP_S)
        finished = []
        for work, tokens in list(self.tokens.items()):
            tokens.append(f"{work.payload.name}{len(tokens)}")
            work.emit(len(tokens))
            if len(tokens) == work.payload.length:
                del self.tokens[work]
                finished.append((work, tokens))
                self.decoder.log.append(("finish", work.payload.name))
        self.decoder.log.append(("step", len(self.tokens) + len(finished)))
        return finished

    def leave(self, work):
        del self.tokens[work]
        self.decoder.log.append(("leave", work.payload.name))


def make_batcher(decoder: CountingDecoder, **options) -> ContinuousBatcher:
    options = {"max_batch_size": 8, "max_wait_ms": 5, **options}
    return ContinuousBatcher("t", decoder.predict_batch, decoder, **options)


def expected(job: Job) -> list[str]:
    return [f"{job.name}{i}" for i in range(job.length)]


async def test_a_short_request_arriving_mid_decode_joins_and_finishes_before_the_long_one():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder)
    long_job, short_job = Job("long", 150), Job("short", 3)
    long_request = asyncio.ensure_future(batcher.submit(long_job))
    await asyncio.sleep(10 * STEP_S)
    short_result = await batcher.submit(short_job)
    assert short_result == expected(short_job)
    assert not long_request.done(), "the short request did not wait for the long one to finish"
    assert await long_request == expected(long_job)
    assert decoder.loops == 1, "the short request joined the running decode instead of starting another"
    assert decoder.whole_batches == []
    assert decoder.thread_names == {"model-t"}, "steps run in the model thread"
    await batcher.stop()


async def test_each_request_gets_its_own_result_among_many_of_mixed_lengths():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder)
    jobs = [Job(f"j{i}-", length) for i, length in enumerate([5, 40, 1, 17, 3, 25, 8, 2, 30, 11])]

    async def arrive(job: Job, delay: float):
        await asyncio.sleep(delay)
        return await batcher.submit(job)

    results = await asyncio.gather(*(arrive(job, i * 2 * STEP_S) for i, job in enumerate(jobs)))
    assert results == [expected(job) for job in jobs]
    await batcher.stop()


async def test_requests_the_decoder_declines_run_whole_request():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder, wait_when_idle=True)
    jobs = [Job(f"b{i}-", 4) for i in range(3)]
    results = await asyncio.gather(*(batcher.submit(job, key="beam") for job in jobs))
    assert results == [expected(job) for job in jobs]
    assert decoder.whole_batches == [["b0-", "b1-", "b2-"]]
    assert decoder.loops == 0
    await batcher.stop()


async def test_another_key_waits_for_the_loop_to_drain_and_later_joiners_do_not_overtake_it():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder)
    first = asyncio.ensure_future(batcher.submit(Job("a1-", 60), key="a"))
    await asyncio.sleep(3 * STEP_S)
    other = asyncio.ensure_future(batcher.submit(Job("b1-", 2), key="b"))
    await asyncio.sleep(STEP_S)
    late = asyncio.ensure_future(batcher.submit(Job("a2-", 2), key="a"))
    await asyncio.gather(first, other, late)
    joins = [name for event, name in decoder.log if event == "join"]
    assert joins == ["a1-", "b1-", "a2-"], "the older request of key b ran before the later request of key a"
    await batcher.stop()


async def test_rows_running_stay_within_max_batch_size():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder, max_batch_size=4)
    jobs = [Job(f"r{i}-", 6, rows=2) for i in range(5)]
    big = Job("big-", 3, rows=9)  # larger than the cap: runs, but alone
    results = await asyncio.gather(*(batcher.submit(job) for job in [*jobs, big]))
    assert results == [expected(job) for job in [*jobs, big]]
    running_rows = 0
    peak = 0
    for event, value in decoder.log:
        if event == "join":
            running_rows += next(j.rows for j in [*jobs, big] if j.name == value)
            peak = max(peak, running_rows)
        elif event == "finish":
            running_rows -= next(j.rows for j in [*jobs, big] if j.name == value)
        if running_rows > 4:
            assert running_rows == big.rows, "only a lone larger job exceeds the cap"
    assert peak == big.rows
    await batcher.stop()


async def test_a_request_whose_client_left_leaves_the_decode_and_the_others_finish():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder)
    gone = asyncio.Event()

    async def disconnected() -> bool:
        return gone.is_set()

    staying = asyncio.ensure_future(batcher.submit(Job("stay-", 80)))
    leaving = asyncio.ensure_future(batcher.submit(Job("leave-", 10_000), disconnected=disconnected))
    await asyncio.sleep(10 * STEP_S)
    gone.set()
    with pytest.raises(Cancelled):
        await leaving
    assert await staying == expected(Job("stay-", 80))
    assert ("leave", "leave-") in decoder.log
    leave_at = decoder.log.index(("leave", "leave-"))
    steps_after = [value for event, value in decoder.log[leave_at:] if event == "step"]
    assert steps_after and max(steps_after) == 1, (
        "the slot was freed: later steps run only the staying request"
    )
    await batcher.stop()


async def test_a_request_that_cannot_join_fails_alone():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder)
    running = asyncio.ensure_future(batcher.submit(Job("run-", 30)))
    await asyncio.sleep(3 * STEP_S)
    good = [asyncio.ensure_future(batcher.submit(Job(f"ok{i}-", 3))) for i in range(2)]
    bad = asyncio.ensure_future(batcher.submit(Job("bad-", 3, fail_join=True)))
    with pytest.raises(ValueError, match="cannot join"):
        await bad
    assert await asyncio.gather(running, *good) == [
        expected(Job("run-", 30)),
        *(expected(Job(f"ok{i}-", 3)) for i in range(2)),
    ]
    await batcher.stop()


async def test_a_failed_step_fails_the_running_requests_and_the_batcher_keeps_serving():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder)
    decoder.fail_step = True
    with pytest.raises(RuntimeError, match="step failed"):
        await batcher.submit(Job("x-", 5))
    decoder.fail_step = False
    assert await batcher.submit(Job("y-", 2)) == expected(Job("y-", 2))
    await batcher.stop()


async def test_streaming_requests_get_their_events_then_the_result():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder)
    items = [item async for item in batcher.stream(Job("s-", 4))]
    assert items == [1, 2, 3, 4, Done(expected(Job("s-", 4)))]
    await batcher.stop()


async def test_stopping_answers_running_requests_with_503():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder)
    running = asyncio.ensure_future(batcher.submit(Job("long-", 10_000)))
    await asyncio.sleep(5 * STEP_S)
    await batcher.stop()
    with pytest.raises(Unavailable):
        await running


class SlowOpening(CountingDecoder):
    """Opening a loop holds the model thread until `release` is set (`opening` says it has begun)."""

    def __init__(self):
        super().__init__()
        self.opening, self.release = threading.Event(), threading.Event()

    def open_loop(self, key, payload, waiting=1):
        self.opening.set()
        self.release.wait(5)
        return super().open_loop(key, payload, waiting)


@pytest.mark.parametrize("key", [None, "beam"], ids=["step-decoded", "declined"])
async def test_a_request_that_leaves_while_its_loop_opens_does_not_stall_the_batcher(key):
    decoder = SlowOpening()
    batcher = make_batcher(decoder, max_batch_size=4)
    gone = asyncio.ensure_future(batcher.submit(Job("gone-", 3), key=key))
    await asyncio.to_thread(decoder.opening.wait, 5)
    gone.cancel()  # the client leaves while the model thread opens its loop
    await asyncio.sleep(0.01)
    decoder.release.set()
    await asyncio.sleep(0.05)  # the batcher goes on with an empty queue
    assert batcher._task is not None and not batcher._task.done(), "the batcher's loop is still running"
    assert await batcher.submit(Job("next-", 2), key=key) == expected(Job("next-", 2))
    assert ("join", "gone-") not in decoder.log
    assert ["gone-"] not in decoder.whole_batches
    await batcher.stop()


async def test_stopping_while_a_loop_opens_ends_cleanly():
    decoder = SlowOpening()
    batcher = make_batcher(decoder)
    waiting = asyncio.ensure_future(batcher.submit(Job("w-", 3), key="beam"))  # declined: whole-request
    await asyncio.to_thread(decoder.opening.wait, 5)
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.01)
    decoder.release.set()
    await stopping
    with pytest.raises(Unavailable):
        await waiting


async def test_a_request_past_its_deadline_leaves_the_decode_with_504_and_the_others_finish():
    decoder = CountingDecoder()
    batcher = make_batcher(decoder)
    staying = asyncio.ensure_future(batcher.submit(Job("stay-", 40)))
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(Job("slow-", 10_000), timeout=15 * STEP_S)
    await asyncio.sleep(10 * STEP_S)  # the next step's check
    assert ("leave", "slow-") in decoder.log
    assert await staying == expected(Job("stay-", 40))
    await batcher.stop()
