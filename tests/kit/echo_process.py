"""The echo service as its own process (`python tests/kit/echo_service.py`), started the way a container starts
it: for what only the real entry point sets up (logging configuration, tracing from the environment)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.kit.testing import free_port

ROOT = Path(__file__).resolve().parents[2]


class EchoProcess:
    def __init__(self, env: dict[str, str]):
        self.rest_port, self.grpc_port = free_port(), free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ECHO_", "MODELSERVE_"))}
        self.env = {
            **base,
            "ECHO_HOST": "127.0.0.1",
            "ECHO_REST_PORT": str(self.rest_port),
            "ECHO_GRPC_PORT": str(self.grpc_port),
            "ECHO_MAX_WAIT_MS": "0",
            **env,
        }
        self.process: subprocess.Popen | None = None
        self.stderr = ""

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> "EchoProcess":
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/kit/echo_service.py")], env=self.env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.rest_url + "/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"echo service did not start:\n{self.stderr}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (a clean drain), then everything it wrote to stderr."""
        self.process.terminate()
        _, self.stderr = self.process.communicate(timeout=60)

    def __exit__(self, *exc) -> None:
        if self.process.returncode is None:
            self.stop()
