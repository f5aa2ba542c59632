"""Where model calls run, and how services that share a machine take turns.

Every model call runs in a `ModelThread`: an executor with exactly one worker thread. OpenMP (torch's CPU
kernels) keeps a thread pool per calling thread, so one thread per model keeps one pool on the cores.

When several services share a process (the all-in-one platform), `share_compute` decides how they share:
- CPU: all services get ONE model thread. One model call runs at a time with all the cores and one OpenMP
  pool (several pools on the same cores thrash: each service then computes several times slower than alone).
  Batches run in arrival order, at most one per batcher in line, so services take turns. A long call
  yields: each `Work.cancelled` check a runner makes between steps is a yield point, where the thread runs
  the calls that other services have waiting, inline, once the current call has had its time slice.
- GPU: each service keeps its own thread, and at most `gpu_concurrency` model calls run at once.
"""

import collections
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any

log = logging.getLogger(__name__)


class _Task:
    __slots__ = ("owner", "fn", "args", "kwargs", "future", "inline_s")

    def __init__(self, owner: str | None, fn: Callable, args: tuple, kwargs: dict):
        self.owner, self.fn, self.args, self.kwargs = owner, fn, args, kwargs
        self.future: Future = Future()
        self.inline_s = 0.0  # time other owners' tasks ran inline inside this one

    def compute(self) -> tuple[bool, Any]:
        try:
            return True, self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # handed to whoever awaits the future
            return False, exc

    def resolve(self, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            self.future.set_result(value)
        else:
            self.future.set_exception(value)


class ModelThread(Executor):
    """One worker thread running tasks in arrival order.

    `quantum_s` is the time slice after which a running task, at its next yield point, lets other owners'
    waiting tasks run inline; `slots` (a semaphore shared by several threads) caps concurrent model calls.
    """

    def __init__(
        self,
        name: str,
        *,
        initializer: Callable[[], None] | None = None,
        quantum_s: float = 0.05,
        slots: threading.Semaphore | None = None,
    ):
        self.name = name
        self.quantum_s = quantum_s
        self._initializer = initializer
        self._slots = slots
        self._tasks: collections.deque[_Task] = collections.deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._shutdown = False
        self._running: list[_Task] = []  # the task and any inline ones on top of it
        self._slice_started = 0.0

    # -- Executor ----------------------------------------------------------------------------

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        return self.run(None, fn, *args, **kwargs)

    def run(self, owner: str | None, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Queue `fn` on behalf of `owner` (a service: its tasks never run inline inside each other)."""
        task = _Task(owner, fn, args, kwargs)
        with self._ready:
            if self._shutdown:
                raise RuntimeError(f"{self.name} is shut down")
            self._tasks.append(task)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._ready.notify()
        return task.future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._ready:
            self._shutdown = True
            if cancel_futures:
                while self._tasks:
                    self._tasks.popleft().future.cancel()
            self._ready.notify_all()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # -- scheduling --------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self._running)

    @property
    def waiting(self) -> int:
        return len(self._tasks)

    def on_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def yield_point(self) -> None:
        """Called by the running task between steps: past its time slice, let others' waiting calls run."""
        if not self.on_thread() or not self._running:
            return
        if time.monotonic() - self._slice_started < self.quantum_s:
            return
        if self._slots is not None:
            self._pass_slot()
        elif len(self._running) == 1:  # inline calls do not nest further
            self._run_others_inline()
        self._slice_started = time.monotonic()

    def _run_others_inline(self) -> None:
        owner = self._running[0].owner
        with self._ready:
            others = [task for task in self._tasks if owner is None or task.owner != owner]
            for task in others:
                self._tasks.remove(task)
        for task in others:
            self._execute(task)

    def _pass_slot(self) -> None:
        self._slots.release()
        time.sleep(0)  # let a waiting thread take the slot
        self._slots.acquire()

    def _work(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while True:
            with self._ready:
                while not self._tasks and not self._shutdown:
                    self._ready.wait()
                if not self._tasks:
                    return
                task = self._tasks.popleft()
            if self._slots is not None:
                with self._slots:
                    self._execute(task)
            else:
                self._execute(task)

    def _execute(self, task: _Task) -> None:
        if not task.future.set_running_or_notify_cancel():
            return
        parent = self._running[-1] if self._running else None
        self._running.append(task)
        started = self._slice_started = time.monotonic()
        try:
            outcome = task.compute()
        finally:
            self._running.pop()
            self._slice_started = time.monotonic()
        elapsed = self._slice_started - started
        if parent is not None:
            parent.inline_s += elapsed
        # The task's own model time, without the time it waited in line or lent to others inline.
        task.future.model_s = elapsed - task.inline_s
        # Idle before the caller hears back, so its next batch sees an idle model and starts at once.
        task.resolve(outcome)


def limit_threads(threads: int | None) -> None:
    """Cap the calling thread's compute threads for whichever framework the service loaded."""
    torch = sys.modules.get("torch")
    if torch is not None and threads:
        torch.set_num_threads(threads)


def shared_thread_default() -> int | None:
    """The shared model thread's compute threads when none are set: one core fewer than torch would take.

    The platform's event loop, upload decoding, the ViT server and a local load generator run on the same cores;
    an OpenMP pool on every core then waits, at each of a model call's many parallel regions, for a worker the
    OS took off its core (measured: tiny imagegen p95 15 s with 2 threads, 1.2 s with 1, on 2 cores)."""
    torch = sys.modules.get("torch")
    return None if torch is None else max(1, _library_threads(torch) - 1)


@functools.cache
def _library_threads(torch) -> int:
    """torch's own thread count, read once: later platforms in this process (tests) must not count down from a
    count an earlier one set."""
    return torch.get_num_threads()


def _uses_gpu(services) -> bool:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return False
    return any(service.settings.device != "cpu" for service in services)


def share_compute(services, *, threads: int | None, quantum_s: float, gpu_concurrency: int) -> str:
    """Make services in one process share the machine's compute (see the module docstring); returns the mode."""
    if len(services) < 2:
        return "alone"
    if _uses_gpu(services):
        slots = threading.BoundedSemaphore(gpu_concurrency)
        for service in services:
            service.use_model_thread(
                ModelThread(f"model-{service.name}", initializer=service.thread_initializer(),
                            quantum_s=quantum_s, slots=slots)
            )
        log.info("compute: %d services, at most %d model calls at once on the GPU", len(services), gpu_concurrency)
        return "gpu-slots"
    threads = threads or shared_thread_default()
    shared = ModelThread("model-shared", initializer=partial(limit_threads, threads), quantum_s=quantum_s)
    for service in services:
        service.use_model_thread(shared)
    log.info(
        "compute: %d services share one model thread (one model call at a time, %.0f ms slices, %s threads)",
        len(services),
        quantum_s * 1000,
        threads or "the library's default",
    )
    return "shared-thread"
