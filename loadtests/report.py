"""Plots and a summary table from Locust's CSV output (and the HPA samples, when recorded).

`loadtest.png`: latency percentiles, requests/s and failures/s, users and HPA replicas over time
on one time axis. `latency_by_request.png`: the 95th percentile of each request over time.
`summary.md`: the final per-request table.
"""

import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a CI machine or a server

import matplotlib.pyplot as plt  # noqa: E402

from .hpa import HpaSample  # noqa: E402

AGGREGATED = "Aggregated"


def _number(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # Locust writes "N/A" before the first answer


def read_history(path: Path) -> dict[str, list[dict]]:
    """stats_history.csv rows grouped by request name ("Aggregated" for the whole test)."""
    rows = defaultdict(list)
    with path.open() as handle:
        for row in csv.DictReader(handle):
            rows[row["Name"]].append(row)
    return rows


def read_stats(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def plot(history_csv: Path, out_dir: Path, hpa: list[HpaSample] | None = None, title: str = "") -> list[Path]:
    history = read_history(history_csv)
    aggregated = history.get(AGGREGATED, [])
    if not aggregated:
        return []
    start = float(aggregated[0]["Timestamp"])
    seconds = [float(r["Timestamp"]) - start for r in aggregated]

    fig, (latency, throughput, capacity) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    for column, style in (("50%", "-"), ("95%", "--"), ("99%", ":")):
        latency.plot(seconds, [_number(r[column]) for r in aggregated], style, label=f"p{column[:-1]}")
    latency.set_ylabel("latency (ms)")
    latency.set_title("Response time percentiles (all requests, recent window)")
    latency.legend(loc="upper left")
    latency.grid(alpha=0.3)

    throughput.plot(
        seconds, [_number(r["Requests/s"]) for r in aggregated], label="requests/s", color="tab:blue"
    )
    throughput.plot(
        seconds, [_number(r["Failures/s"]) for r in aggregated], label="failures/s", color="tab:red"
    )
    throughput.set_ylabel("per second")
    throughput.set_title("Throughput and failures")
    throughput.legend(loc="upper left")
    throughput.grid(alpha=0.3)

    capacity.plot(seconds, [_number(r["User Count"]) for r in aggregated], label="users", color="tab:gray")
    capacity.set_ylabel("concurrent users")
    capacity.set_xlabel("seconds since start")
    capacity.grid(alpha=0.3)
    if hpa:
        replicas = capacity.twinx()
        by_name = defaultdict(list)
        for sample in hpa:
            by_name[sample.hpa].append(sample)
        for name, samples in sorted(by_name.items()):
            times = [s.timestamp - start for s in samples]
            line = replicas.step(
                times, [s.current_replicas for s in samples], where="post", label=f"{name} replicas"
            )
            replicas.step(
                times,
                [s.desired_replicas for s in samples],
                where="post",
                linestyle=":",
                color=line[0].get_color(),
                label=f"{name} desired",
            )
        replicas.set_ylabel("HPA replicas")
        replicas.yaxis.get_major_locator().set_params(integer=True)
        replicas.legend(loc="upper right", fontsize="small")
        capacity.set_title("Users and HPA replicas")
    else:
        capacity.set_title("Users (no Kubernetes context: HPA replicas not recorded)")
    capacity.legend(loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    main_png = out_dir / "loadtest.png"
    fig.savefig(main_png, dpi=100)
    plt.close(fig)

    fig, axis = plt.subplots(figsize=(11, 5))
    for name, rows in sorted(history.items()):
        if name == AGGREGATED:
            continue
        axis.plot(
            [float(r["Timestamp"]) - start for r in rows], [_number(r["95%"]) for r in rows], label=name
        )
    axis.set_ylabel("p95 latency (ms)")
    axis.set_xlabel("seconds since start")
    axis.set_title("95th percentile per request")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    by_request_png = out_dir / "latency_by_request.png"
    fig.savefig(by_request_png, dpi=100)
    plt.close(fig)
    return [main_png, by_request_png]


def summary_table(stats_csv: Path) -> str:
    header = "| request | type | requests | failures | median ms | p95 ms | p99 ms | req/s |"
    lines = [header, "|" + "---|" * 8]
    for row in read_stats(stats_csv):
        lines.append(
            f"| {row['Name']} | {row['Type']} | {row['Request Count']} | {row['Failure Count']} | "
            f"{row['50%']} | {row['95%']} | {row['99%']} | {_number(row['Requests/s']):.2f} |"
        )
    return "\n".join(lines)
