"""What the server adds to a model call at concurrency 1, and whether batching costs a lone request anything.

1. The kit's test service (tests/kit/echo_service.py: the runner returns its input): REST and gRPC
   latency at concurrency 1 minus the runner call itself, with the batcher waiting max_wait_ms for
   company even when the model is idle (`wait_when_idle=true`, the old behaviour) and without (default).
2. Translation (tiny model) at concurrency 1: batching on (16, 5 ms) vs off (1, 0 ms).

    .venv/bin/python bench/bench_overhead.py [--requests 300]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import grpc
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "kit"))

from echo_service import GRPC_METHOD, EchoSettings, create_service  # noqa: E402

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
        models={"en-de": str(TRANSLATION_MODELS / "wmt19-en-de")}, log_level="warning",
        max_batch_size=16 if batching else 1, max_wait_ms=5 if batching else 0, default_max_new_tokens=16,
    )
    with ServerThread(lambda: [create_translation(settings)], settings) as server:
        body = {"text": "The quick brown fox jumps over the lazy dog.", "source_lang": "en", "target_lang": "de"}
        with httpx.Client(base_url=server.rest_url, timeout=60) as client:
            return p50(timed(lambda: client.post("/v1/translate", json=body), requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    rows = []
    for _ in range(2):  # interleaved, so drift on a shared machine hits both
        for wait in (True, False):
            rows.append((wait, echo_overhead(args.requests, wait)))
    print("\n| batcher, model idle | runner call p50 ms | REST overhead p50 ms | gRPC overhead p50 ms |")
    print("|---|---|---|---|")
    for wait in (True, False):
        picked = [row for flag, row in rows if flag == wait]
        label = "waits max_wait_ms (5 ms) for company" if wait else "starts at once (default)"
        print(f"| {label} | {statistics.mean(r['direct'] for r in picked):.3f} | "
              f"{statistics.mean(r['rest'] for r in picked):.2f} | {statistics.mean(r['grpc'] for r in picked):.2f} |")
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


if __name__ == "__main__":
    main()
