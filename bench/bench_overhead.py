"""What the server adds to a model call at concurrency 1, and whether batching costs a lone request anything.

1. The kit's test service (tests/kit/echo_service.py: the runner returns its input): REST and gRPC
   latency at concurrency 1 minus the runner call itself, with the batcher waiting max_wait_ms for
   company even when the model is idle (`wait_when_idle=true`, the old behaviour) and without (default).
2. Translation (tiny model) at concurrency 1: batching on (16, 5 ms) vs off (1, 0 ms).
3. Where the CPU of a translation request goes outside the model, stage by stage (`--stages`): the translation
   service over real HTTP in a child process at its defaults (log level info, JSON access lines, here to
   /dev/null; no API keys, no tracer), the runner's own code intact but `generate` stubbed (it returns the
   first 8 source tokens) and continuous batching off, so that one `generate` stub per batch is all the model
   there is. A client in this process sends `--stage-requests` at concurrency 16. The child's CPU time per
   request is the total; the stages are timers (`time.thread_time`, so a thread waiting for the GIL or a lock
   counts nothing) wrapped around the synchronous functions that do each stage, in whichever thread runs them.
   "everything else" is the total minus the timed stages: the asyncio loop, socket calls, Starlette/FastAPI
   routing and dependency solving, the kit's middleware bookkeeping, batcher hand-off and thread hand-offs.
   A timer costs a few µs itself (thread_time is a system call): the child measures that on a no-op and the
   table takes it out of each stage (the part inside the timed interval) and of the total (all of it).
   `--baseline DIR` measures another checkout (a `git worktree` of HEAD, say) beside this one, runs alternating:

    .venv/bin/python bench/bench_overhead.py [--requests 300]
    .venv/bin/python bench/bench_overhead.py --stages [--stage-requests 1500] [--baseline /tmp/before-ovh]
"""

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import grpc
import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
TREE_VARIABLE = "BENCH_OVERHEAD_TREE"
# A stage child measuring another checkout (`--baseline`) imports that tree's services.
sys.path.insert(0, os.environ.get(TREE_VARIABLE) or str(REPO))
sys.path.append(str(REPO / "tests" / "kit"))

from loadgen import post_load  # noqa: E402

from services.kit.testing import ServerThread  # noqa: E402
from services.translation.service import create_service as create_translation  # noqa: E402
from services.translation.settings import TranslationSettings  # noqa: E402

TRANSLATION_MODELS = REPO / "models" / "translation"


def timed(call, requests: int) -> list[float]:
    for _ in range(10):  # warm connections and caches
        call()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        samples.append(1000 * (time.perf_counter() - started))
    return samples


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def echo_overhead(requests: int, wait_when_idle: bool) -> dict[str, float]:
    # Imported here: echo_service puts this checkout first on the path, which a baseline stage child must not see.
    from echo_service import GRPC_METHOD, EchoSettings, create_service

    settings = EchoSettings(log_level="warning", max_wait_ms=5, wait_when_idle=wait_when_idle)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        runner = server.services[0].runner
        body = {"text": "hello"}
        payload = create_service.__globals__["EchoRequest"](**body)

        class Work:  # what the batcher hands the runner
            def __init__(self):
                self.payload, self.cancelled = payload, False

        direct = p50(timed(lambda: runner.predict_batch([Work()]), requests))
        with httpx.Client(base_url=server.rest_url) as client:
            rest = p50(timed(lambda: client.post("/v1/echo", json=body), requests))
        with grpc.insecure_channel(server.grpc_target) as channel:
            say = channel.unary_unary(GRPC_METHOD)
            raw = json.dumps(body).encode()
            grpc_ms = p50(timed(lambda: say(raw, timeout=5), requests))
    return {"direct": direct, "rest": rest - direct, "grpc": grpc_ms - direct}


def translation_c1(requests: int, batching: bool) -> float:
    settings = TranslationSettings(
        models={"en-de": str(TRANSLATION_MODELS / "wmt19-en-de")},
        log_level="warning",
        max_batch_size=16 if batching else 1,
        max_wait_ms=5 if batching else 0,
        default_max_new_tokens=16,
    )
    with ServerThread(lambda: [create_translation(settings)], settings) as server:
        body = {
            "text": "The quick brown fox jumps over the lazy dog.",
            "source_lang": "en",
            "target_lang": "de",
        }
        with httpx.Client(base_url=server.rest_url, timeout=60) as client:
            return p50(timed(lambda: client.post("/v1/translate", json=body), requests))


# --- 3. stages -----------------------------------------------------------------------------------------------

STAGE_CONCURRENCY = 16
STUB_OUTPUT_TOKENS = 8
STAGE_BODY = {
    "text": "The quick brown fox jumps over the lazy dog.",
    "source_lang": "en",
    "target_lang": "de",
    "num_beams": 1,
    "max_new_tokens": 24,
}


class StageTimers:
    """CPU seconds (this thread's) and calls per stage, summed over every thread; nested timers of the same stage
    count once, so a stage is never counted inside itself."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.local = threading.local()
        self.lock = threading.Lock()

    def wrap(self, owner, name: str, stage: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            open_stages = self.local.__dict__.setdefault("open", set())
            if stage in open_stages:
                return original(*args, **kwargs)
            open_stages.add(stage)
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.thread_time() - started
                open_stages.discard(stage)
                with self.lock:
                    self.seconds[stage] += elapsed
                    self.calls[stage] += 1

        setattr(owner, name, timed)

    def reset(self) -> None:
        with self.lock:
            self.seconds.clear()
            self.calls.clear()

    def overhead(self, calls: int = 20000) -> tuple[float, float]:
        """(seconds a timer adds inside the interval it measures, seconds it adds in all) per call, on a no-op."""

        class Probe:
            @staticmethod
            def noop():
                return None

        plain = time.thread_time()
        for _ in range(calls):
            Probe.noop()
        plain = time.thread_time() - plain
        self.wrap(Probe, "noop", "calibration")
        wrapped = time.thread_time()
        for _ in range(calls):
            Probe.noop()
        wrapped = time.thread_time() - wrapped
        inside = self.seconds.pop("calibration") / calls
        self.calls.pop("calibration")
        return inside, max(0.0, wrapped - plain) / calls


def instrument(timers: StageTimers) -> None:
    """Timers around the synchronous functions of each stage (those of both trees, where they differ)."""
    import fastapi.routing
    import h11
    import prometheus_client.metrics as prometheus
    from fastapi._compat import v2 as fastapi_fields
    from pydantic import BaseModel
    from starlette.responses import JSONResponse, Response
    from transformers import FSMTTokenizer
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from services.kit import logs, tracing

    timers.wrap(H11Protocol, "data_received", "HTTP: request parsing (uvicorn h11)")
    timers.wrap(h11.Connection, "send", "HTTP: response writing (h11)")
    timers.wrap(logs, "request_id_from", "request id")
    timers.wrap(logs.RequestRecord, "log", "access log line")
    for metric, methods in (
        (prometheus.MetricWrapperBase, ("labels",)),
        (prometheus.Counter, ("inc",)),
        (prometheus.Gauge, ("inc", "dec", "set")),
        (prometheus.Histogram, ("observe",)),
    ):
        for method in methods:
            timers.wrap(metric, method, "metrics")
    timers.wrap(tracing, "enabled", "tracing checks")
    timers.wrap(tracing, "work_spans", "tracing checks")
    timers.wrap(fastapi_fields.ModelField, "validate", "validation (pydantic, request and response)")
    timers.wrap(fastapi_fields.ModelField, "serialize", "JSON encoding of the response")
    timers.wrap(fastapi.routing, "jsonable_encoder", "JSON encoding of the response")
    timers.wrap(BaseModel, "model_dump_json", "JSON encoding of the response")
    timers.wrap(JSONResponse, "render", "JSON encoding of the response")
    timers.wrap(Response, "render", "JSON encoding of the response")
    timers.wrap(FSMTTokenizer, "__call__", "tokenizing (service and runner)")
    timers.wrap(FSMTTokenizer, "pad", "tokenizing (service and runner)")
    timers.wrap(FSMTTokenizer, "batch_decode", "runner around the model (detokenizing)")


def serve_stub_translation() -> None:
    """The child: the translation service with `generate` stubbed, timed by stage; prints its URL, then on each
    line of stdin: "reset" zeroes the timers, "report" prints them as JSON."""
    import torch
    from transformers import FSMTForConditionalGeneration

    from services.kit.logs import configure_logging
    from services.translation.settings import TranslationSettings

    def stub_generate(self, input_ids=None, **options):
        return input_ids[:, :STUB_OUTPUT_TOKENS]

    FSMTForConditionalGeneration.generate = torch.inference_mode()(stub_generate)
    timers = StageTimers()
    instrument(timers)
    inside_s, per_call_s = timers.overhead()
    configure_logging("info", "json")  # the default level: one access line per request, formatted and written
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115 - the process's lifetime
    settings = TranslationSettings(
        models={"en-de": str(TRANSLATION_MODELS / "wmt19-en-de")},
        continuous_batching=False,
        threads=1,
        max_batch_size=16,
        max_wait_ms=5,
        max_queue=1024,
    )
    with ServerThread(lambda: [create_translation(settings)], settings) as server:
        print(server.rest_url, flush=True)
        for line in sys.stdin:
            if line.strip() == "reset":
                timers.reset()
            else:
                report = {
                    "seconds": timers.seconds,
                    "calls": timers.calls,
                    "inside_s": inside_s,
                    "per_call_s": per_call_s,
                }
                print(json.dumps(report), flush=True)


def stage_costs(requests: int, tree: str | None = None) -> tuple[dict[str, float], float]:
    """(µs per request by stage, total server CPU µs per request) at concurrency 16."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-stub"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, TREE_VARIABLE: tree or ""},
    )
    try:
        url = child.stdout.readline().strip() + "/v1/translate"
        if not url.startswith("http"):
            raise RuntimeError("the stub server did not start")
        asyncio.run(post_load(url, [STAGE_BODY] * 200, STAGE_CONCURRENCY))  # warm up
        child.stdin.write("reset\n")
        child.stdin.flush()
        server = psutil.Process(child.pid)
        cpu_before = sum(server.cpu_times()[:2])
        asyncio.run(post_load(url, [STAGE_BODY] * requests, STAGE_CONCURRENCY))
        cpu_s = sum(server.cpu_times()[:2]) - cpu_before
        child.stdin.write("report\n")
        child.stdin.flush()
        report = json.loads(child.stdout.readline())
    finally:
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
        child.wait(timeout=60)
    calls = report["calls"]
    total_us = (cpu_s - sum(calls.values()) * report["per_call_s"]) * 1e6 / requests
    by_stage = {
        stage: max(0.0, seconds - calls[stage] * report["inside_s"]) * 1e6 / requests
        for stage, seconds in report["seconds"].items()
    }
    return by_stage, total_us


def report_stages(requests: int, baseline: str | None, rounds: int = 2) -> None:
    """The stage table of this tree, beside `baseline`'s (another checkout, first on the child's path) when given;
    the trees' runs alternate (A B A B), so that drift on a shared machine hits both."""
    trees = {"this tree": None, **({f"baseline ({baseline})": baseline} if baseline else {})}
    runs: dict[str, list] = {label: [] for label in trees}
    for _ in range(rounds):
        for label, path in trees.items():
            runs[label].append(stage_costs(requests, path))
    stages = sorted({stage for tree_runs in runs.values() for by_stage, _ in tree_runs for stage in by_stage})
    means, totals = {}, {}
    for label, tree_runs in runs.items():
        means[label] = {
            stage: statistics.mean(by_stage.get(stage, 0.0) for by_stage, _ in tree_runs) for stage in stages
        }
        totals[label] = statistics.mean(total for _, total in tree_runs)
    labels = list(reversed(trees)) if baseline else list(trees)
    print(
        f"\nTranslation, generate stubbed, concurrency {STAGE_CONCURRENCY}, {requests} requests x {rounds} runs "
        "per tree, server CPU µs per request:\n"
    )
    print("| stage | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for stage in sorted(stages, key=means["this tree"].get, reverse=True):
        print(f"| {stage} | " + " | ".join(f"{means[label][stage]:.0f}" for label in labels) + " |")
    rest = {label: totals[label] - sum(means[label].values()) for label in labels}
    print(
        "| everything else (asyncio, sockets, routing, middleware, batcher and thread hand-offs) | "
        + " | ".join(f"{rest[label]:.0f}" for label in labels)
        + " |"
    )
    print(
        "| **server CPU per request** (psutil, all threads) | "
        + " | ".join(f"**{totals[label]:.0f}**" for label in labels)
        + " |"
    )
    text_stages = ("tokenizing (service and runner)", "runner around the model (detokenizing)")
    outside = {label: totals[label] - sum(means[label].get(s, 0.0) for s in text_stages) for label in labels}
    print(
        "| of which outside the service's text processing | "
        + " | ".join(f"{outside[label]:.0f}" for label in labels)
        + " |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--stages", action="store_true", help="only the stage table (section 3)")
    parser.add_argument("--stage-requests", type=int, default=1500)
    parser.add_argument("--baseline", help="another checkout to measure beside this tree (stage table)")
    parser.add_argument("--serve-stub", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stub:
        serve_stub_translation()
        return
    if args.stages:
        report_stages(args.stage_requests, args.baseline)
        return
    rows = []
    for _ in range(2):  # interleaved, so drift on a shared machine hits both
        for wait in (True, False):
            rows.append((wait, echo_overhead(args.requests, wait)))
    print("\n| batcher, model idle | runner call p50 ms | REST overhead p50 ms | gRPC overhead p50 ms |")
    print("|---|---|---|---|")
    for wait in (True, False):
        picked = [row for flag, row in rows if flag == wait]
        label = "waits max_wait_ms (5 ms) for company" if wait else "starts at once (default)"
        print(
            f"| {label} | {statistics.mean(r['direct'] for r in picked):.3f} | "
            f"{statistics.mean(r['rest'] for r in picked):.2f} | {statistics.mean(r['grpc'] for r in picked):.2f} |"
        )
    sys.stdout.flush()
    on, off = [], []
    for _ in range(2):
        on.append(translation_c1(args.requests // 3, True))
        off.append(translation_c1(args.requests // 3, False))
    print("\n| translation (tiny), concurrency 1 | p50 ms |")
    print("|---|---|")
    print(f"| batching on (16, 5 ms) | {statistics.mean(on):.2f} |")
    print(f"| batching off (1, 0 ms) | {statistics.mean(off):.2f} |")
    print(f"| on / off | {statistics.mean(on) / statistics.mean(off):.2f}x |")
    sys.stdout.flush()
    report_stages(args.stage_requests, args.baseline)


if __name__ == "__main__":
    main()
