"""Start the local platform (`python -m services`) with the tiny models, for local and CI load tests.

Ports are free loopback ports unless given; the environment comes from env/tiny.env (read the way
bash's `set -a; . env/tiny.env` reads it) on top of the caller's. Leaving the context sends
SIGTERM, so the platform drains like a pod being stopped.
"""

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from clients.auth import API_KEY_ENV, bearer
from services.kit.testing import free_port

REPO = Path(__file__).resolve().parents[1]
VIT_MODEL_NAME = "hf-vit"
# Random-weight Whisper rarely emits end-of-text: cap each window so a request takes a fraction of a
# second instead of 448 decoder steps. Applies only where the environment does not say otherwise.
TINY_MODEL_DEFAULTS = {"ASR_MAX_NEW_TOKENS": "40"}


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines with shell quoting and comments, as `set -a; . file` would export them."""
    variables = {}
    for line in path.read_text().splitlines():
        for word in shlex.split(line, comments=True):
            key, sep, value = word.partition("=")
            if sep and key.isidentifier():
                variables[key] = value
    return variables


@dataclass
class LocalPlatform:
    env_file: Path = REPO / "env" / "tiny.env"
    services: str = "all"
    extra_env: dict[str, str] = field(default_factory=dict)  # wins over the env file and the caller's
    ready_timeout_s: float = 300.0
    log_path: Path | None = None
    rest_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    vit_rest_port: int = field(default_factory=free_port)
    vit_grpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    _log_file: object = field(default=None, init=False, repr=False)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def vit_url(self) -> str:
        return f"http://127.0.0.1:{self.vit_rest_port}"

    @property
    def vit_grpc_target(self) -> str:
        return f"127.0.0.1:{self.vit_grpc_port}"

    @property
    def has_vit(self) -> bool:
        """Whether the platform starts the ViT server (it does once services/vit/__main__.py exists)."""
        wanted = self.services == "all" or "vit" in self.services.split(",")
        return wanted and (REPO / "services" / "vit" / "__main__.py").exists()

    @property
    def has_shared_server(self) -> bool:
        """False when only ViT was asked for: then no service runs on the platform's own ports."""
        return self.services == "all" or any(name != "vit" for name in self.services.split(","))

    def environment(self) -> dict[str, str]:
        """The env file, then the caller's environment (explicit settings win), then our ports."""
        env = {**TINY_MODEL_DEFAULTS, **read_env_file(self.env_file), **os.environ, **self.extra_env}
        env.update(
            PLATFORM_SERVICES=self.services,
            PLATFORM_HOST="127.0.0.1",
            PLATFORM_REST_PORT=str(self.rest_port),
            PLATFORM_GRPC_PORT=str(self.grpc_port),
            PLATFORM_LOG_LEVEL=env.get("PLATFORM_LOG_LEVEL", "warning"),
            VIT_HOST="127.0.0.1",
            VIT_REST_PORT=str(self.vit_rest_port),
            VIT_GRPC_PORT=str(self.vit_grpc_port),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        return env

    def start(self) -> "LocalPlatform":
        self._log_file = open(self.log_path, "wb") if self.log_path else None  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services"],
            cwd=REPO,
            env=self.environment(),
            stdout=self._log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.ready_timeout_s
        checks = [self._platform_ready] if self.has_shared_server else []
        checks += [self._vit_ready] if self.has_vit else []
        while checks:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the platform exited with code {self.process.returncode} before it was ready"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the platform was not ready within {self.ready_timeout_s:.0f} s")
            checks = [check for check in checks if not check()]
            time.sleep(0.5)
        return self

    def api_key(self) -> str | None:
        """A key the platform accepts when it requires one: the clients' own, else the first it was given."""
        env = self.environment()
        configured = [key.strip() for key in env.get("MODELSERVE_API_KEYS", "").split(",") if key.strip()]
        return env.get(API_KEY_ENV) or (configured[0] if configured else None)

    def _platform_ready(self) -> bool:
        return _get_ok(f"{self.rest_url}/readyz")

    def _vit_ready(self) -> bool:
        # The model status route is not a health check: with API keys on it wants one.
        return _get_ok(f"{self.vit_url}/v1/models/{VIT_MODEL_NAME}", self.api_key())

    def served_services(self) -> list[str]:
        names = (
            httpx.get(f"{self.rest_url}/readyz", timeout=5).json()["services"]
            if self.has_shared_server
            else []
        )
        return sorted(names + (["vit"] if self.has_vit else []))

    def stop(self) -> int | None:
        """SIGTERM (drain), then the exit code; None when it was never started."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return self.process.returncode

    def __enter__(self) -> "LocalPlatform":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _get_ok(url: str, api_key: str | None = None) -> bool:
    headers = {"authorization": bearer(api_key)} if api_key else {}
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
