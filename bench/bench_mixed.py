"""Mixed traffic on the all-in-one platform: does one service slow the others down?

For each compute-sharing mode (`separate`: every service its own model thread, as before;
`auto`: one shared model thread on CPU with time slices), starts the local platform with the tiny models
and runs the Locust load (loadtests.run) first against each torch service alone (2 users: one REST,
one gRPC, as the mixed run gives each), then against all five together (10 users). Prints, per service:
model time per batch (serving_compute_seconds, from /metrics) alone and mixed, and the Locust p50/p95 of
the service's busiest request, mixed.

    .venv/bin/python bench/bench_mixed.py [--modes separate,auto] [--solo-s 12] [--mixed-s 30]
"""

import argparse
import csv
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
    """Runs loadtests.run; returns per service (p50 ms, p95 ms, requests) of its busiest request name."""
    command = [
        sys.executable, "-m", "loadtests.run", "--service", service, "--users", str(users),
        "--duration", f"{seconds}s", "--host", platform.rest_url, "--grpc-host", platform.grpc_target,
        "--vit-host", platform.vit_url, "--vit-grpc-host", platform.vit_grpc_target, "--payloads", "tiny",
        "--no-hpa", "--out", str(out),
    ]
    subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 300)
    busiest: dict[str, tuple] = {}
    with open(out / "locust_stats.csv") as stats:
        for row in csv.DictReader(stats):
            name = row["Name"]
            if row["Type"] == "" or ": " not in name or row["Name"] == "Aggregated":
                continue
            owner = name.split(": ")[0]
            entry = (float(row["50%"]), float(row["95%"]), int(row["Request Count"]))
            if owner not in busiest or entry[2] > busiest[owner][2]:
                busiest[owner] = entry
    return busiest


def run_mode(mode: str, solo_s: int, mixed_s: int, workdir: Path) -> dict[str, dict]:
    results: dict[str, dict] = {service: {} for service in TORCH_SERVICES}
    with LocalPlatform(services="all", extra_env={"PLATFORM_COMPUTE_SHARING": mode},
                       log_path=workdir / f"platform-{mode}.log") as platform:
        for service in TORCH_SERVICES:
            before = compute_totals(platform.rest_url)
            latency = locust(platform, service, 2, solo_s, workdir / f"{mode}-{service}")
            results[service]["solo_ms"] = per_batch_ms(before, compute_totals(platform.rest_url), service)
            results[service]["solo_latency"] = latency.get(service)
        before = compute_totals(platform.rest_url)
        latency = locust(platform, "all", 10, mixed_s, workdir / f"{mode}-all")
        after = compute_totals(platform.rest_url)
        for service in TORCH_SERVICES:
            results[service]["mixed_ms"] = per_batch_ms(before, after, service)
            results[service]["mixed_latency"] = latency.get(service)
        results["vit"] = {"mixed_latency": latency.get("vit")}
    return results


def fmt(value, spec=".0f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="separate,auto")
    parser.add_argument("--solo-s", type=int, default=12)
    parser.add_argument("--mixed-s", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {mode: run_mode(mode, args.solo_s, args.mixed_s, Path(tmp)) for mode in args.modes.split(",")}
    print("\n| mode | service | model ms/batch alone | mixed | mixed / alone | alone p50 / p95 ms | mixed p50 / p95 ms |")
    print("|---|---|---|---|---|---|---|")
    for mode, results in runs.items():
        for service, row in results.items():
            solo, mixed = row.get("solo_ms"), row.get("mixed_ms")
            ratio = f"{mixed / solo:.2f}x" if solo and mixed else "-"
            alone = row.get("solo_latency") or (None, None, 0)
            together = row.get("mixed_latency") or (None, None, 0)
            print(f"| {mode} | {service} | {fmt(solo)} | {fmt(mixed)} | {ratio} | "
                  f"{fmt(alone[0])} / {fmt(alone[1])} | {fmt(together[0])} / {fmt(together[1])} |")


if __name__ == "__main__":
    main()
