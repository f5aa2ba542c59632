"""What every hostile attack needs: the platform of a checkout in a subprocess with its memory watched, and
small builders of hostile payloads. bench_hostile.py gathers the attacks of every `hostile_*.py` module here
(each defines ATTACKS: (name, attack) pairs; an attack takes (platform, cap_s) and returns (answer, detail) or
(answer, detail, seconds)).
"""

import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

DEFAULT_REPO = Path(__file__).resolve().parents[1]
# The launcher's helpers come from this checkout; the platform under attack runs from the one at --repo.
sys.path.insert(0, str(DEFAULT_REPO))

from services.kit.launch import free_port, read_env_file  # noqa: E402


def process_tree(pid: int) -> list[int]:
    pids, index = [pid], 0
    while index < len(pids):
        for children in Path(f"/proc/{pids[index]}/task").glob("*/children"):
            try:
                pids += [int(child) for child in children.read_text().split()]
            except OSError:
                pass
        index += 1
    return pids


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Platform:
    """The platform of one checkout in a subprocess (own process group), with its memory watched."""

    def __init__(self, repo: Path, python: str, ready_timeout: float = 600, extra_env: dict[str, str] | None = None):
        self.repo = repo
        self.python = python
        self.ready_timeout = ready_timeout
        # Settings of this platform beyond env/tiny.env (API keys, say); `variant` starts another with more.
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("MODELSERVE_API_KEY")}
        env.update(read_env_file(self.repo / "env" / "tiny.env"))
        ports = {name: free_port() for name in ("PLATFORM_REST_PORT", "PLATFORM_GRPC_PORT", "VIT_REST_PORT", "VIT_GRPC_PORT")}
        env.update({key: str(port) for key, port in ports.items()})
        env.update(PLATFORM_HOST="127.0.0.1", VIT_HOST="127.0.0.1", PLATFORM_LOG_LEVEL="warning", VIT_LOG_LEVEL="warning")
        # Importing `services` must find the checkout under test, not this one.
        env["PYTHONPATH"] = str(self.repo)
        env.update(self.extra_env)
        self.rest_url = f"http://127.0.0.1:{ports['PLATFORM_REST_PORT']}"
        self.grpc_target = f"127.0.0.1:{ports['PLATFORM_GRPC_PORT']}"
        self.vit_rest_url = f"http://127.0.0.1:{ports['VIT_REST_PORT']}"
        self.vit_grpc_target = f"127.0.0.1:{ports['VIT_GRPC_PORT']}"
        return env

    def start(self) -> None:
        started = time.monotonic()
        self.process = subprocess.Popen(
            [self.python, "-m", "services"], env=self.env(), cwd=self.repo, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for url in (self.rest_url, self.vit_rest_url):
            while not self.ready(url):
                if self.process.poll() is not None:
                    raise RuntimeError(f"the platform exited with {self.process.returncode} while starting")
                if time.monotonic() - started > self.ready_timeout:
                    raise RuntimeError("the platform did not become ready")
                time.sleep(0.25)
        print(f"platform ready in {time.monotonic() - started:.0f} s", file=sys.stderr)

    def variant(self, **extra_env: str) -> "Platform":
        """Another platform of the same checkout with more settings; the attack that needs it starts and stops it."""
        return Platform(self.repo, self.python, self.ready_timeout, {**self.extra_env, **extra_env})

    @staticmethod
    def ready(url: str) -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        return self.process.poll() is None and all(self.ready(url) for url in (self.rest_url, self.vit_rest_url))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def reset_peaks(self) -> dict[int, int]:
        """VmHWM back to the current RSS in every process of the tree (Linux >= 4.0); returns those RSS (kB)."""
        baseline = {}
        for pid in process_tree(self.process.pid):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass
            baseline[pid] = status_kb(pid, "VmRSS")
        return baseline

    def growth_mb(self, baseline: dict[int, int], field: str = "VmHWM") -> float:
        return sum(max(0, status_kb(pid, field) - rss) for pid, rss in baseline.items()) / 1024


class MemoryWatch:
    """Samples the tree's RSS while an attack runs and kills the platform past the cap."""

    def __init__(self, platform: Platform, baseline: dict[int, int], cap_mb: float):
        self.platform, self.baseline, self.cap_mb = platform, baseline, cap_mb
        self.killed_at_mb: float | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.wait(0.05):
            growth = self.platform.growth_mb(self.baseline, "VmRSS")
            if growth > self.cap_mb:
                self.killed_at_mb = growth
                self.platform.kill()
                return

    def __enter__(self) -> "MemoryWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


# The attacks. Each returns (answer, detail), or (answer, detail, seconds) when the seconds that matter are
# not the whole call's.


def wav(rate: int, frames: int = 16000) -> bytes:
    """16-bit PCM silence whose header claims `rate` (written by hand: libsndfile refuses to write such rates)."""
    body = bytes(frames * 2)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2 % 2**32, 2, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def speech_like(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = 0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.05 * np.sin(2 * np.pi * 0.5 * t))) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1024))) + chunk(b"IEND", b"")


def summary(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error")
        detail = error.get("message", "") if isinstance(error, dict) else str(error or "")
    except (ValueError, AttributeError):  # not JSON, or not an object
        detail = f"{len(response.content)} bytes of {response.headers.get('content-type', '?')}"
    return str(response.status_code), detail


def http_post(url: str, cap: float, **kwargs) -> tuple[str, str]:
    try:
        return summary(httpx.post(url, timeout=cap, **kwargs))
    except httpx.TimeoutException:
        return "timeout", f"no answer within {cap:g} s"
    except httpx.TransportError as exc:
        return "connection error", type(exc).__name__


def audio_upload(path: str, rate: int) -> Callable[[Platform, float], tuple[str, str]]:
    def attack(platform: Platform, cap: float) -> tuple[str, str]:
        files = {"file": ("attack.wav", wav(rate), "audio/wav")}
        return http_post(platform.rest_url + path, cap, files=files)

    return attack


