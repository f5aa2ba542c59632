"""Each torch service in its own process, as its container runs it (`python -m services.<name>`), on free
loopback ports, with its output in a log file."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.kit.testing import free_port

REPO = Path(__file__).resolve().parents[2]
PREFIXES = {"translation": "TRANSLATION_", "asr": "ASR_", "tts": "TTS_", "imagegen": "IMAGEGEN_"}
# The check talks to servers it starts itself; keys configured for a real deployment would only lock it out.
AUTH_VARIABLES = ("MODELSERVE_API_KEYS", "MODELSERVE_API_KEYS_FILE")


@dataclass
class ServiceProcess:
    name: str
    env: dict[str, str]  # settings for this service, on top of the check's own environment
    log_path: Path
    rest_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    ready_s: float | None = None
    _started: float = 0.0

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
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        })
        env.setdefault(f"{p}LOG_LEVEL", "warning")
        return env

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                cwd=REPO,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._started = time.monotonic()

    def check_ready(self) -> bool:
        """True once /readyz answers 200 (models loaded and warmed up); raises if the process died."""
        if self.ready_s is not None:
            return True
        if self.process.poll() is not None:
            raise RuntimeError(f"exited with code {self.process.returncode} before it was ready: {self.log_tail()}")
        try:
            ready = httpx.get(f"{self.rest_url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            ready = False
        if ready:
            self.ready_s = time.monotonic() - self._started
        return ready

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM (the kit drains in-flight requests), then SIGKILL after `grace_s`; the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


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
