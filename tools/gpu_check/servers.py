"""Each torch service in its own process, as its container runs it (`python -m services.<name>`), on free
loopback ports, with its output in a log file."""

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.kit.launch import Launched, free_port, with_repo_on_path
from services.registry import entries

PREFIXES = {entry.name: entry.env_prefix for entry in entries().values() if entry.torch}
# The check talks to servers it starts itself; keys configured for a real deployment would only lock it out.
AUTH_VARIABLES = ("MODELSERVE_API_KEYS", "MODELSERVE_API_KEYS_FILE")


@dataclass
class ServiceProcess:
    name: str
    env: dict[str, str]  # settings for this service, on top of the check's own environment
    log_path: Path
    rest_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    launched: Launched | None = None

    @property
    def prefix(self) -> str:
        return PREFIXES[self.name]

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES}
        env.update(self.env)
        p = self.prefix
        env.update({
            f"{p}HOST": "127.0.0.1",
            f"{p}REST_PORT": str(self.rest_port),
            f"{p}GRPC_PORT": str(self.grpc_port),
            f"{p}LOG_FORMAT": "text",
            "PYTHONPATH": with_repo_on_path(os.environ),
        })
        env.setdefault(f"{p}LOG_LEVEL", "warning")
        return env

    @property
    def ready_s(self) -> float | None:
        """Seconds from start to ready; None until then."""
        return self.launched.ready_s if self.launched else None

    def start(self) -> None:
        command = [sys.executable, "-m", f"services.{self.name}"]
        ready = [f"{self.rest_url}/readyz"]
        self.launched = Launched(command, env=self.environment(), ready=ready, log_path=self.log_path).start()

    def check_ready(self) -> bool:
        """True once /readyz answers 200 (models loaded and warmed up); raises if the process died."""
        return self.launched.is_ready()

    def log_tail(self, lines: int = 15) -> str:
        return self.launched.log_tail(lines) if self.launched else ""

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM (the kit drains in-flight requests), then SIGKILL after `grace_s`; the exit code."""
        return self.launched.stop(grace_s) if self.launched else None


def start_all(servers: list[ServiceProcess], timeout_s: float) -> dict[str, str]:
    """Start every server at once (loading overlaps), wait until each is ready or failed; {name: error}."""
    for server in servers:
        server.start()
    errors: dict[str, str] = {}
    waiting = list(servers)
    deadline = time.monotonic() + timeout_s
    while waiting:
        for server in list(waiting):
            try:
                if server.check_ready():
                    waiting.remove(server)
                    print(f"[{server.name}] ready after {server.ready_s:.1f} s", flush=True)
            except RuntimeError as exc:
                errors[server.name] = str(exc)
                waiting.remove(server)
                print(f"[{server.name}] FAILED to start: {exc}", flush=True)
        if waiting and time.monotonic() > deadline:
            for server in waiting:
                errors[server.name] = f"not ready within {timeout_s:.0f} s: {server.log_tail()}"
                print(f"[{server.name}] FAILED: not ready within {timeout_s:.0f} s", flush=True)
            break
        time.sleep(0.25)
    return errors
