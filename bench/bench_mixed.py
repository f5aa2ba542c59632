"""Mixed traffic on the all-in-one platform: the user's load test, and does one service slow the others down?

For each compute-sharing mode (`separate`: every service its own model thread; `auto`: one shared model thread
on CPU with time slices), starts the platform exactly as `make serve` does (`python -m services`, env/tiny.env)
and runs what a user runs against it, `make loadtest SERVICE=all PAYLOADS=tiny USERS=10 DURATION=45s`
(loadtests.run), FIRST, on the fresh platform: the same command, payloads, users, duration and Locust
percentiles, so this bench and the load test report the same numbers. Then each torch service alone
(2 users: one REST, one gRPC, as the mixed run gives each) for its model time per batch alone.

Prints, per service, the latency of its main REST endpoint in the mixed run (p50/p95 and how many answers:
with a dozen answers Locust's p95 is the slowest one), and model time per batch (serving_compute_seconds,
from /metrics) alone and mixed. The target: imagegen's `POST /v1/images/generations` p95 under 3 s.

    .venv/bin/python bench/bench_mixed.py [--modes separate,auto] [--mixed-s 45] [--solo-s 12] [--env K=V ...]
"""

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtests.platform import LocalPlatform  # noqa: E402

TORCH_SERVICES = ("translation", "asr", "tts", "imagegen")
# The request each service is judged by: its main REST endpoint (issue 26 names imagegen's).
MAIN_REQUEST = {
    "translation": "translation: POST /v1/translate",
    "asr": "asr: POST /v1/audio/transcriptions",
    "tts": "tts: POST /v1/audio/speech",
    "imagegen": "imagegen: POST /v1/images/generations",
    "vit": "vit: POST /v1/models/hf-vit:predict",
}
IMAGEGEN_P95_TARGET_MS = 3000
COMPUTE = re.compile(r'^serving_compute_seconds_(sum|count)\{batcher="([^".]+)\.[^"]*"\} (\S+)$', re.M)


def compute_totals(rest_url: str) -> dict[str, list[float]]:
    """Per service: [model seconds summed over requests, requests]. A batch's time is observed once per
    request in it, so sum/count is the model time of the batch a request ran in."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for kind, service, value in COMPUTE.findall(httpx.get(f"{rest_url}/metrics", timeout=10).text):
        totals[service][0 if kind == "sum" else 1] += float(value)
    return totals


def per_batch_ms(before: dict, after: dict, service: str) -> float | None:
    seconds = after[service][0] - before[service][0]
    count = after[service][1] - before[service][1]
    return 1000 * seconds / count if count else None


def locust(platform: LocalPlatform, service: str, users: int, seconds: int, out: Path) -> dict[str, tuple]:
    """Runs loadtests.run as `make loadtest HOST=...` does; returns (p50 ms, p95 ms, answers) per request name."""
    command = [
        sys.executable,
        "-m",
        "loadtests.run",
        "--service",
        service,
        "--users",
        str(users),
        "--duration",
        f"{seconds}s",
        *platform.target_args(),
        "--payloads",
        "tiny",
        "--no-hpa",
        "--out",
        str(out),
    ]
    subprocess.run(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 300
    )
    with open(out / "locust_stats.csv") as stats:
        return {
            row["Name"]: (float(row["50%"]), float(row["95%"]), int(row["Request Count"]))
            for row in csv.DictReader(stats)
            if row["Name"] != "Aggregated" and row["Request Count"] != "0"
        }


def run_mode(mode: str, solo_s: int, mixed_s: int, env: dict[str, str], workdir: Path) -> dict[str, dict]:
    results: dict[str, dict] = {service: {} for service in MAIN_REQUEST}
    # make serve's log level: every request's access log line is part of the serving cost a user sees.
    platform_env = {"PLATFORM_LOG_LEVEL": "info", **env, "PLATFORM_COMPUTE_SHARING": mode}
    with LocalPlatform(
        services="all", extra_env=platform_env, log_path=workdir / f"platform-{mode}.log"
    ) as platform:
        before = compute_totals(platform.rest_url)
        mixed = locust(platform, "all", 10, mixed_s, workdir / f"{mode}-all")
        after = compute_totals(platform.rest_url)
        for service, request in MAIN_REQUEST.items():
            results[service]["mixed_latency"] = mixed.get(request)
            if service in TORCH_SERVICES:
                results[service]["mixed_ms"] = per_batch_ms(before, after, service)
        for service in TORCH_SERVICES:
            before = compute_totals(platform.rest_url)
            alone = locust(platform, service, 2, solo_s, workdir / f"{mode}-{service}")
            results[service]["solo_ms"] = per_batch_ms(before, compute_totals(platform.rest_url), service)
            results[service]["solo_latency"] = alone.get(MAIN_REQUEST[service])
    return results


def fmt(value, spec=".0f") -> str:
    return "-" if value is None else format(value, spec)


def latency(entry) -> str:
    return "-" if entry is None else f"{entry[0]:.0f} / {entry[1]:.0f} ({entry[2]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="separate,auto")
    parser.add_argument("--mixed-s", type=int, default=45, help="the mixed run (make loadtest's DURATION)")
    parser.add_argument("--solo-s", type=int, default=12)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the platform (repeatable)")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            mode: run_mode(mode, args.solo_s, args.mixed_s, env, Path(tmp)) for mode in args.modes.split(",")
        }
    print(f"\nload average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(
        "\n| mode | request | mixed p50 / p95 ms (answers) | alone p50 / p95 ms (answers) "
        "| model ms/batch alone | mixed | mixed / alone |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode, results in runs.items():
        for service, row in results.items():
            solo, mixed = row.get("solo_ms"), row.get("mixed_ms")
            ratio = f"{mixed / solo:.2f}x" if solo and mixed else "-"
            print(
                f"| {mode} | {MAIN_REQUEST[service]} | {latency(row.get('mixed_latency'))} | "
                f"{latency(row.get('solo_latency'))} | {fmt(solo)} | {fmt(mixed)} | {ratio} |"
            )
    for mode, results in runs.items():
        imagegen = results["imagegen"].get("mixed_latency")
        verdict = (
            "no answers"
            if imagegen is None
            else (
                f"{imagegen[1]:.0f} ms: {'meets' if imagegen[1] < IMAGEGEN_P95_TARGET_MS else 'misses'} the target"
            )
        )
        print(
            f"\n{mode}: imagegen POST /v1/images/generations p95 under the mixed load {verdict} "
            f"(< {IMAGEGEN_P95_TARGET_MS} ms)"
        )


if __name__ == "__main__":
    main()
