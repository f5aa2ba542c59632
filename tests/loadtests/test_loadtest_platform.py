"""CI load test: a short headless Locust run against the local platform with the tiny models.

The platform starts as a subprocess (`python -m services`, env/tiny.env, free ports); Locust runs
every service's REST and gRPC users under a step-load shape up to 10 users for 20 s, then on until
every service and protocol answered ANSWERS requests (at most 300 s more): judged on counts, so a
busy machine only makes it take longer. The platform requires an API key, which the users take from
MODELSERVE_API_KEY. The run must end without a single failed request, every service the platform
serves must have answered over both protocols, and the results folder must hold the CSV, HTML and
PNG reports.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from clients import AuthenticationError, GrpcClient
from loadtests.platform import REPO, LocalPlatform
from services.platform import available_services

USERS, DURATION, ANSWERS, ANSWERS_TIMEOUT_S = 10, "20s", 5, 300
API_KEY = "loadtest-key-7f3a"


@pytest.fixture(scope="module")
def platform(models_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("platform") / "platform.log"
    # Warm-up off: it only makes the first requests faster, and start-up time is CI time.
    extra_env = {"PLATFORM_WARMUP": "false", "VIT_WARMUP": "false", "MODELSERVE_API_KEYS": API_KEY}
    local = LocalPlatform(log_path=log, extra_env=extra_env)
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
        *platform.target_args(),
        "--users",
        str(USERS),
        "--duration",
        DURATION,
        "--shape",
        "step",
        "--steps",
        "4",
        "--answers",
        str(ANSWERS),
        "--answers-timeout",
        f"{ANSWERS_TIMEOUT_S}s",
        "--out",
        str(out),
    ]
    env = {**os.environ, "MODELSERVE_API_KEY": API_KEY}
    limit_s = 20 + ANSWERS_TIMEOUT_S + 300  # the whole run, platform discovery and reports included
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit_s)
    assert run.returncode == 0, f"load test failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return out


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_no_request_failed(results):
    stats = rows(results / "locust_stats.csv")
    aggregated = next(r for r in stats if r["Name"] == "Aggregated")
    assert int(aggregated["Failure Count"]) == 0, (results / "locust_failures.csv").read_text()
    assert rows(results / "locust_exceptions.csv") == []


def test_the_platform_under_test_requires_the_key(platform):
    # Otherwise a clean run would not show that the users send it.
    response = httpx.post(f"{platform.rest_url}/v1/translate", json={"text": "Hi"}, timeout=30)
    assert response.status_code == 401
    with GrpcClient(platform.grpc_target, api_key="", timeout=30) as client, pytest.raises(AuthenticationError):
        client.translation.models()


def test_every_service_answered_over_rest_and_grpc(platform, results):
    served = platform.served_services()
    assert served == available_services()  # nothing the platform knows was left out
    answered = {}
    for row in rows(results / "locust_stats.csv"):
        if row["Name"] != "Aggregated":
            service = row["Name"].split(":", 1)[0]
            protocol = "grpc" if row["Type"] == "gRPC" else "rest"
            successes = int(row["Request Count"]) - int(row["Failure Count"])
            answered[service, protocol] = answered.get((service, protocol), 0) + successes
    short = {
        (service, protocol): answered.get((service, protocol), 0)
        for service in served
        for protocol in ("rest", "grpc")
        if answered.get((service, protocol), 0) == 0
    }
    # The run waited for ANSWERS of each; once (under stress-ng) the final CSV held one fewer than the
    # runner had counted at the stop, so only "none at all" is judged here.
    assert short == {}, f"never answered: {short}"


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
