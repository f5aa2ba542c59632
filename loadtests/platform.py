"""Start the local platform (`python -m services`) with the tiny models, for local and CI load tests.

Ports are free loopback ports unless given; the environment comes from env/tiny.env (read the way
bash's `set -a; . env/tiny.env` reads it) on top of the caller's. Leaving the context sends
SIGTERM, so the platform drains like a pod being stopped.
"""

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from clients.auth import API_KEY_ENV, bearer
from services.kit.launch import Launched, free_port, read_env_file, with_repo_on_path

REPO = Path(__file__).resolve().parents[1]
VIT_MODEL_NAME = "hf-vit"
# Random-weight Whisper rarely emits end-of-text: cap each window so a request takes a fraction of a
# second instead of 448 decoder steps. Applies only where the environment does not say otherwise.
TINY_MODEL_DEFAULTS = {"ASR_MAX_NEW_TOKENS": "40"}


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
    launched: Launched | None = None

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

    def target_args(self) -> list[str]:
        """`python -m loadtests.run`'s options that point it at this platform."""
        return [
            "--host", self.rest_url,
            "--grpc-host", self.grpc_target,
            "--vit-host", self.vit_url,
            "--vit-grpc-host", self.vit_grpc_target,
        ]  # fmt: skip

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
            PYTHONPATH=with_repo_on_path(os.environ),
        )
        return env

    def start(self) -> "LocalPlatform":
        """Start it and wait until ready; raises NotReady (with the log's tail) if it exits or times out."""
        ready = [f"{self.rest_url}/readyz"] if self.has_shared_server else []
        # The model status route is not a health check: with API keys on it wants one.
        ready += [f"{self.vit_url}/v1/models/{VIT_MODEL_NAME}"] if self.has_vit else []
        api_key = self.api_key()
        self.launched = Launched(
            [sys.executable, "-m", "services"],
            env=self.environment(),
            ready=ready,
            ready_headers={"authorization": bearer(api_key)} if api_key else None,
            ready_timeout_s=self.ready_timeout_s,
            log_path=self.log_path,
        )
        self.launched.start().wait_ready()
        return self

    def api_key(self) -> str | None:
        """A key the platform accepts when it requires one: the clients' own, else the first it was given."""
        env = self.environment()
        configured = [key.strip() for key in env.get("MODELSERVE_API_KEYS", "").split(",") if key.strip()]
        return env.get(API_KEY_ENV) or (configured[0] if configured else None)

    def served_services(self) -> list[str]:
        names = (
            httpx.get(f"{self.rest_url}/readyz", timeout=5).json()["services"]
            if self.has_shared_server
            else []
        )
        return sorted(names + (["vit"] if self.has_vit else []))

    def stop(self) -> int | None:
        """SIGTERM (drain), then the exit code; None when it was never started."""
        return self.launched.stop() if self.launched else None

    def __enter__(self) -> "LocalPlatform":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
