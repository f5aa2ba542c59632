"""CI load test: a short headless Locust run against the local platform with the tiny models.

The platform starts as a subprocess (`python -m services`, env/tiny.env, free ports); Locust runs
every service's REST and gRPC users for 20 s under a step-load shape up to 10 users. The run must
end without a single failed request, every service the platform serves must have received
traffic over both protocols, and the results folder must hold the CSV, HTML and PNG reports.
"""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from loadtests.platform import REPO, LocalPlatform
from services.platform import available_services

USERS, DURATION = 10, "20s"


@pytest.fixture(scope="module")
def platform(models_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("platform") / "platform.log"
    # Warm-up off: it only makes the first requests faster, and start-up time is CI time.
    local = LocalPlatform(log_path=log, extra_env={"PLATFORM_WARMUP": "false", "VIT_WARMUP": "false"})
    local.start()
    yield local
    assert local.stop() == 0, f"the platform did not drain cleanly; see {log}"


@pytest.fixture(scope="module")
def results(platform, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loadtest")
    command = [
        sys.executable,
        "-m",
        "loadtests.run",
        "--service",
        "all",
        "--payloads",
        "tiny",
        "--no-hpa",
        "--host",
        platform.rest_url,
        "--grpc-host",
        platform.grpc_target,
        "--vit-host",
        platform.vit_url,
        "--vit-grpc-host",
        platform.vit_grpc_target,
        "--users",
        str(USERS),
        "--duration",
        DURATION,
        "--shape",
        "step",
        "--steps",
        "4",
        "--out",
        str(out),
    ]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, f"load test failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return out


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_no_request_failed(results):
    stats = rows(results / "locust_stats.csv")
    aggregated = next(r for r in stats if r["Name"] == "Aggregated")
    assert int(aggregated["Request Count"]) > 50
    assert int(aggregated["Failure Count"]) == 0, (results / "locust_failures.csv").read_text()
    assert rows(results / "locust_exceptions.csv") == []


def test_every_service_received_traffic_over_rest_and_grpc(platform, results):
    served = platform.served_services()
    assert served == available_services()  # nothing the platform knows was left out
    requests = {}
    for row in rows(results / "locust_stats.csv"):
        if row["Name"] != "Aggregated":
            service = row["Name"].split(":", 1)[0]
            protocol = "grpc" if row["Type"] == "gRPC" else "rest"
            requests[service, protocol] = requests.get((service, protocol), 0) + int(row["Request Count"])
    for service in served:
        for protocol in ("rest", "grpc"):
            assert requests.get((service, protocol), 0) > 0, f"no {protocol} traffic for {service}"


def test_step_shape_raised_the_users_in_steps(results):
    counts = [
        int(r["User Count"]) for r in rows(results / "locust_stats_history.csv") if r["Name"] == "Aggregated"
    ]
    plateaus = sorted(set(counts) - {0})
    assert plateaus[-1] == USERS and len(plateaus) >= 3
    first_full = counts.index(USERS)
    assert counts[:first_full] == sorted(counts[:first_full])  # up in steps, never down on the way


def test_reports_are_written(results):
    for name in ("loadtest.png", "latency_by_request.png"):
        with Image.open(results / name) as image:
            assert image.format == "PNG" and image.width > 500
    assert "locust" in (results / "report.html").read_text().lower()
    assert "| Aggregated |" in (results / "summary.md").read_text()
