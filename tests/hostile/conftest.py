"""One platform process (`python -m services`, tiny models, ViT as its child) shared by the hostile tests.

A separate process, so that each attack's peak memory can be read from /proc for the server alone.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.kit.launch import free_port, read_env_file

REPO = Path(__file__).resolve().parents[2]
# Requests that reach a model stay small: the attacks are on parsing and validation, not on compute.
COMPUTE_BOUNDS = {
    "TRANSLATION_MAX_NEW_TOKENS": "8",
    "TRANSLATION_DEFAULT_MAX_NEW_TOKENS": "8",
    "TRANSLATION_MAX_NUM_BEAMS": "2",
    "TTS_MAX_INPUT_CHARS": "200",
    "IMAGEGEN_MAX_PIXELS": "4096",
    "IMAGEGEN_MAX_IMAGES": "1",
    "ASR_MAX_AUDIO_SECONDS": "5",
}


def process_tree(pid: int) -> list[int]:
    pids, index = [pid], 0
    while index < len(pids):
        for children in Path(f"/proc/{pids[index]}/task").glob("*/children"):
            pids += [int(child) for child in children.read_text().split()]
        index += 1
    return pids


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Platform:
    process: subprocess.Popen
    rest_url: str
    grpc_target: str
    vit_rest_url: str
    vit_grpc_target: str

    def reset_peak_memory(self) -> dict[int, int]:
        """Resets each server process's VmHWM to its current RSS; returns those RSS values (kB)."""
        baseline = {}
        for pid in process_tree(self.process.pid):
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            baseline[pid] = status_kb(pid, "VmRSS")
        return baseline

    def peak_growth_mb(self, baseline: dict[int, int]) -> float:
        return sum(max(0, status_kb(pid, "VmHWM") - rss) for pid, rss in baseline.items()) / 1024

    def assert_alive(self) -> None:
        assert self.process.poll() is None, "the platform exited"
        for url in (self.rest_url, self.vit_rest_url):
            assert httpx.get(url + "/readyz", timeout=30).status_code == 200


@pytest.fixture(scope="session")
def platform(models_dir) -> Platform:
    ports = {name: free_port() for name in ("PLATFORM_REST_PORT", "PLATFORM_GRPC_PORT", "VIT_REST_PORT", "VIT_GRPC_PORT")}
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODELSERVE_API_KEY")}
    env.update(read_env_file(REPO / "env" / "tiny.env"))
    env.update(COMPUTE_BOUNDS)
    env.update({key: str(port) for key, port in ports.items()})
    env.update(PLATFORM_HOST="127.0.0.1", VIT_HOST="127.0.0.1", PLATFORM_LOG_LEVEL="warning", VIT_LOG_LEVEL="warning")
    process = subprocess.Popen([sys.executable, "-m", "services"], env=env, cwd=REPO, start_new_session=True)
    running = Platform(
        process,
        rest_url=f"http://127.0.0.1:{ports['PLATFORM_REST_PORT']}",
        grpc_target=f"127.0.0.1:{ports['PLATFORM_GRPC_PORT']}",
        vit_rest_url=f"http://127.0.0.1:{ports['VIT_REST_PORT']}",
        vit_grpc_target=f"127.0.0.1:{ports['VIT_GRPC_PORT']}",
    )
    try:
        deadline = time.monotonic() + 300
        for url in (running.rest_url, running.vit_rest_url):
            while True:
                assert process.poll() is None, "the platform exited while starting"
                assert time.monotonic() < deadline, "the platform did not become ready"
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
