"""What every Locust user shares: command-line options, targets, payload pools, gRPC timing.

Importing this module initialises gRPC for gevent (Locust has already monkey-patched the standard
library by then): without `init_gevent` every blocking gRPC call stalls the gevent loop and the
users run one at a time, silently (see ../shared/STACK.md).
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import gevent
import grpc.experimental.gevent as grpc_gevent
from locust import User, events
from locust.runners import WorkerRunner

from clients.auth import API_KEY_ENV, resolve_api_key
from clients.client import VIT_GRPC_PORT, VIT_REST_PORT, GrpcClient, with_port
from clients.retry import NO_RETRY

from .payloads import PROFILES, Payloads

grpc_gevent.init_gevent()

PLATFORM_GRPC_PORT = 50051
# Long enough for image generation on a loaded GPU; a load test wants to see slow answers, not retries.
REQUEST_TIMEOUT_S = 300.0


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    group = parser.add_argument_group("modelserve targets and payloads")
    group.add_argument(
        "--grpc-host", default="", help="platform gRPC host:port (default: --host's host:50051)"
    )
    group.add_argument(
        "--vit-host", default="", help=f"ViT REST URL (default: --host's host:{VIT_REST_PORT})"
    )
    group.add_argument(
        "--vit-grpc-host", default="", help=f"ViT gRPC host:port (default: --host's host:{VIT_GRPC_PORT})"
    )
    group.add_argument("--payloads", choices=sorted(PROFILES), default="standard", help="payload sizes")
    group.add_argument(
        "--answers",
        type=int,
        default=0,
        help="stop once every service and protocol under test answered this many requests (0: off); "
        "--run-time stays the cap",
    )
    group.add_argument(
        "--min-run-time",
        type=float,
        default=0,
        help="with --answers: seconds before it may stop (the step shape spreads its steps over them)",
    )
    # On the parser itself: only its add_argument knows is_secret (masked in the web UI).
    parser.add_argument(
        "--api-key", default="", is_secret=True, help=f"API key (default ${API_KEY_ENV}, which keeps it out of ps)"
    )


ANSWER_POLL_S = 0.5


def answered(environment) -> dict[tuple[str, str], int]:
    """Successful answers so far per (service, protocol) of every user class that runs."""
    counts = {
        (cls.service, "grpc" if issubclass(cls, GrpcUser) else "rest"): 0 for cls in environment.user_classes
    }
    for (request_name, method), entry in environment.runner.stats.entries.items():
        key = (request_name.split(":", 1)[0], "grpc" if method == "gRPC" else "rest")
        if key in counts:
            counts[key] += entry.num_requests - entry.num_failures
    return counts


@events.test_start.add_listener
def stop_once_answered(environment, **_) -> None:
    """--answers: a run judged on counts, not on a time window, so a slow (or busy) machine only takes longer."""
    options = environment.parsed_options
    if not options or not options.answers or isinstance(environment.runner, WorkerRunner):
        return

    def watch() -> None:
        started = time.monotonic()
        while environment.runner.state not in ("stopping", "stopped"):
            gevent.sleep(ANSWER_POLL_S)
            if time.monotonic() - started >= options.min_run_time and min(
                answered(environment).values()
            ) >= options.answers:
                environment.runner.quit()
                return

    gevent.spawn(watch)


def grpc_target(environment) -> str:
    return environment.parsed_options.grpc_host or with_port(_host_only(environment.host), PLATFORM_GRPC_PORT)


def vit_url(environment) -> str:
    return environment.parsed_options.vit_host or with_port(environment.host, VIT_REST_PORT)


def vit_grpc_target(environment) -> str:
    return environment.parsed_options.vit_grpc_host or with_port(_host_only(environment.host), VIT_GRPC_PORT)


def api_key(environment) -> str | None:
    """--api-key, else $MODELSERVE_API_KEY: sent by every user, REST and gRPC."""
    given = environment.parsed_options.api_key if environment.parsed_options else ""
    return resolve_api_key(given or None)


def _host_only(url: str) -> str:
    return urlsplit(url).hostname or "127.0.0.1"


_payloads: dict[str, Payloads] = {}


def payloads(environment) -> Payloads:
    """One payload pool per profile and process, built on first use (before the user's first request)."""
    name = environment.parsed_options.payloads if environment.parsed_options else "standard"
    if name not in _payloads:
        _payloads[name] = Payloads(PROFILES[name])
    return _payloads[name]


def name(service: str, operation: str) -> str:
    """Request names start with the service, so results can be grouped per service."""
    return f"{service}: {operation}"


class GrpcUser(User):
    """A user calling the platform through the SDK's gRPC clients, timed as Locust requests.

    Retries are off: a load test must count every refusal, not hide it behind a backoff.
    """

    abstract = True
    service = ""

    def on_start(self) -> None:
        env = self.environment
        self.grpc = GrpcClient(
            grpc_target(env),
            vit_target=vit_grpc_target(env),
            timeout=REQUEST_TIMEOUT_S,
            retry=NO_RETRY,
            api_key=api_key(env) or "",
        )
        self.payloads = payloads(env)

    def on_stop(self) -> None:
        self.grpc.close()

    @contextmanager
    def measure(self, operation: str) -> Iterator[dict]:
        """Time the block as one request; the block sets `record["length"]` (bytes or items received)."""
        record = {"length": 0}
        started = time.perf_counter()
        exception = None
        try:
            yield record
        except Exception as exc:  # every failure counts, typed client errors and unexpected ones alike
            exception = exc
        self.environment.events.request.fire(
            request_type="gRPC",
            name=name(self.service, operation),
            response_time=(time.perf_counter() - started) * 1000,
            response_length=record["length"],
            exception=exception,
            context={},
        )


class Check(Exception):
    """A 2xx answer whose content is wrong (marks the request failed)."""
