"""A real Prometheus scraping the local platform (tiny models), as the component's ServiceMonitors
would scrape the pods: the platform's REST port at the torch services' path, the ViT server at TF
Serving's monitoring path. Static target labels stand in for what Kubernetes service discovery
attaches (namespace, pod, service); the rules of the PrometheusRule are loaded and evaluated."""

import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from monitoring_support import (
    NAMESPACE,
    PLATFORM_POD,
    VIT_POD,
    PrometheusServer,
    adapter_rules,
    expand_metrics_query,
    service_monitor_paths,
    write_rules_file,
)

from clients.client import Client, GrpcClient
from loadtests.payloads import audio_file, image_file
from loadtests.platform import LocalPlatform


def _address(url: str) -> str:
    return url.split("://", 1)[1]


@pytest.fixture(scope="module")
def platform(models_dir, tmp_path_factory):
    missing = [tool for tool in ("prometheus", "promtool") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed: `make prometheus` installs them (make test does)"
        )
    log = tmp_path_factory.mktemp("platform") / "platform.log"
    local = LocalPlatform(
        log_path=log,
        extra_env={
            "PLATFORM_WARMUP": "false",
            "VIT_WARMUP": "false",
            # Keys off whatever the caller's environment says: the scrape config sends none.
            "MODELSERVE_API_KEYS": "",
            "MODELSERVE_API_KEYS_FILE": "",
            # One image per model call and a short queue: a small burst both queues (the
            # autoscaling metric) and sheds.
            "IMAGEGEN_MAX_BATCH_SIZE": "1",
            "IMAGEGEN_MAX_QUEUE": "6",
        },
    )
    local.start()
    yield local
    assert local.stop() == 0, f"the platform did not drain cleanly; see {log}"


@pytest.fixture(scope="module")
def prometheus(platform, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("prometheus")
    paths = service_monitor_paths()
    scrape_configs = [
        {
            "job_name": "platform",
            "metrics_path": paths["torch"],
            "static_configs": [
                {
                    "targets": [_address(platform.rest_url)],
                    "labels": {"namespace": NAMESPACE, "pod": PLATFORM_POD, "service": "platform"},
                }
            ],
        },
        {
            "job_name": "vit",
            "metrics_path": paths["tf-serving"],
            "static_configs": [
                {
                    "targets": [_address(platform.vit_url)],
                    "labels": {"namespace": NAMESPACE, "pod": VIT_POD, "service": "vit"},
                }
            ],
        },
    ]
    server = PrometheusServer(workdir, scrape_configs, rule_files=[write_rules_file(workdir / "rules.yaml")])
    server.start()
    yield server
    server.stop()


def wait_until_scraped_after(prometheus: PrometheusServer, moment: float, timeout_s: float = 180.0) -> None:
    """Until every target has been scraped successfully (and rules evaluated) after `moment`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stamps = [float(sample["value"][1]) for sample in prometheus.query("timestamp(up == 1)")]
        if len(stamps) == 2 and min(stamps) > moment + 1.0:
            return
        time.sleep(0.25)
    raise AssertionError(f"targets not scraped after the requests: {prometheus.targets()}")


@pytest.fixture(scope="module")
def traffic(platform, prometheus) -> float:
    """Real requests to every service over REST and gRPC, plus a caller error, in two rounds with a
    scrape between them: a labelled counter appears at its first increment, and rate() only sees
    the increments after that. Returns the last moment before any request (every target scraped)."""
    wait_until_scraped_after(prometheus, time.time())
    quiet_at = time.time()
    audio, _ = audio_file(1.5, np.random.default_rng(0))
    image = image_file(32, 32, random.Random(0))
    with (
        Client(platform.rest_url, vit_url=platform.vit_url, api_key="", timeout=120) as rest,
        GrpcClient(platform.grpc_target, vit_target=platform.vit_grpc_target, api_key="") as grpc,
    ):
        for _ in range(2):
            for client in (rest, grpc):
                client.translation.translate(
                    ["Hello world."], source_lang="en", target_lang="de", max_new_tokens=8
                )
                client.asr.transcribe(audio)
                client.tts.speech("Hello there.")
                client.images.generate("a red cat", size="64x64", steps=2, seed=1)
                client.vit.classify(image)
            list(rest.tts.stream_speech("Hello there. See you soon."))
            refused = httpx.post(
                f"{platform.rest_url}/v1/translate",
                json={"text": "Hi", "source_lang": "en", "target_lang": "xx"},
                timeout=120,
            )
            assert 400 <= refused.status_code < 500, refused.text
            wait_until_scraped_after(prometheus, time.time())
    return quiet_at


def _image_burst(rest_url: str, requests: int, steps: int, while_running=None) -> list[int]:
    """Concurrent 64x64 image generations; `while_running` is called every 0.25 s until all answered."""

    def generate(seed: int) -> int:
        body = {"prompt": "a lighthouse at dusk", "size": "64x64", "steps": steps, "seed": seed}
        return httpx.post(f"{rest_url}/v1/images/generations", json=body, timeout=180).status_code

    with ThreadPoolExecutor(requests) as pool:
        futures = [pool.submit(generate, seed) for seed in range(requests)]
        while not all(future.done() for future in futures):
            if while_running:
                while_running()
            time.sleep(0.25)
        return [future.result() for future in futures]


@dataclass
class QueueBurst:
    query: str  # the adapter's metricsQuery, expanded for both pods
    before: dict[str, float]  # per pod, before any traffic
    peak: dict[str, float]  # per pod, the highest value seen while it ran
    statuses: list[int]


def _per_pod(result: list[dict]) -> dict[str, float]:
    return {sample["metric"]["pod"]: float(sample["value"][1]) for sample in result}


@pytest.fixture(scope="module")
def queue_burst(platform, prometheus, traffic) -> QueueBurst:
    """Concurrent image generations against a queue of 6, while polling the custom metric
    prometheus-adapter would serve the queue-autoscaling HPAs (its rule's metricsQuery, expanded
    for the pods an HPA asks about)."""
    rule = adapter_rules()[0]
    query = expand_metrics_query(rule, "serving_queue_depth", NAMESPACE, [PLATFORM_POD, VIT_POD])
    before = _per_pod(prometheus.query(query, at=traffic))
    peak = {pod: 0.0 for pod in before}

    def poll() -> None:
        for pod, value in _per_pod(prometheus.query(query)).items():
            peak[pod] = max(peak.get(pod, 0.0), value)

    # Two waves: the first creates the 503 and shed series, so that rate() sees the second's. With
    # one image per call, the queue holds 4 or more for three 40-step calls: several scrapes.
    statuses = _image_burst(platform.rest_url, requests=10, steps=1, while_running=poll)
    wait_until_scraped_after(prometheus, time.time())
    statuses += _image_burst(platform.rest_url, requests=10, steps=40, while_running=poll)
    wait_until_scraped_after(prometheus, time.time())
    return QueueBurst(query=query, before=before, peak=peak, statuses=statuses)
