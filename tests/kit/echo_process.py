"""The echo service as its own process (`python tests/kit/echo_service.py`), started the way a container starts
it: for what only the real entry point sets up (logging configuration, tracing from the environment)."""

import os
import sys

from services.kit.launch import REPO, Launched, free_port


class EchoProcess:
    def __init__(self, env: dict[str, str]):
        self.rest_port, self.grpc_port = free_port(), free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ECHO_", "MODELSERVE_"))}
        self.launched = Launched(
            [sys.executable, str(REPO / "tests/kit/echo_service.py")],
            env={
                **base,
                "ECHO_HOST": "127.0.0.1",
                "ECHO_REST_PORT": str(self.rest_port),
                "ECHO_GRPC_PORT": str(self.grpc_port),
                "ECHO_MAX_WAIT_MS": "0",
                **env,
            },
            ready=[self.rest_url + "/readyz"],
            ready_timeout_s=60,
            log_stdout=False,
        )

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def stderr(self) -> str:
        """Everything it wrote to stderr so far (all of it once stopped)."""
        return self.launched.output()

    def __enter__(self) -> "EchoProcess":
        self.launched.start().wait_ready()
        return self

    def stop(self) -> None:
        """SIGTERM (a clean drain)."""
        self.launched.stop()

    def __exit__(self, *exc) -> None:
        self.stop()
