"""Server start-up: REST and gRPC on one event loop, model loading, readiness, graceful drain."""

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

import uvicorn
from prometheus_client import start_http_server

from . import tracing
from .auth import ApiKeys
from .compute import share_compute
from .config import ServiceSettings
from .grpc_server import create_grpc_server
from .http_server import connection_bound, guarded_h11, raise_open_file_limit
from .logs import configure_logging
from .rest import create_rest_app
from .service import Service
from .state import ServerState

log = logging.getLogger(__name__)

# After the drain, answers already made still need to reach their clients: the servers get this long to
# close. The whole shutdown therefore takes at most shutdown_grace_s + CLOSE_S (+ a second for the model
# thread), which the manifests' terminationGracePeriodSeconds must exceed.
CLOSE_S = 3.0


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: `serve` owns SIGTERM so it can drain first."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _load(service: Service, warmup: bool) -> None:
    started = time.perf_counter()
    service.runner.load()
    if warmup:
        service.runner.warmup()
    log.info("%s ready in %.1f s", service.name, time.perf_counter() - started)


async def load_services(services: list[Service], warmup: bool) -> None:
    """Load and warm up each service in its own model thread, where its requests will run."""
    loop = asyncio.get_running_loop()
    for service in services:
        await loop.run_in_executor(service.model_thread, _load, service, warmup)


async def close_runners(services: list[Service]) -> None:
    """Each runner's `close()` (background threads, files, device memory), in its model thread, after the drain."""
    loop = asyncio.get_running_loop()
    for service in services:
        close = getattr(service.runner, "close", None)
        if close is None:
            continue
        try:
            await loop.run_in_executor(service.model_thread, close)
        except Exception:
            log.exception("%s: closing the runner failed", service.name)


async def serve(
    services: list[Service],
    settings: ServiceSettings,
    *,
    stop: asyncio.Event | None = None,
    state: ServerState | None = None,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT when running in the main thread), then drain.

    Ports open at once so probes can answer; /readyz turns 200 only once every model has loaded
    and warmed up. On stop, readiness fails and new requests get 503 immediately, in-flight requests
    get up to `shutdown_grace_s` to finish, whatever is still queued or running is answered 503, then
    both servers close within CLOSE_S.
    """
    stop = stop or asyncio.Event()
    state = state or ServerState()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)

    if settings.compute_sharing == "auto":
        share_compute(services, threads=settings.threads, quantum_s=settings.compute_quantum_ms / 1000,
                      gpu_concurrency=settings.gpu_concurrency)
    tracing.configure(services[0].name if len(services) == 1 else "modelserve")
    api_keys = ApiKeys.from_env()
    if api_keys.enabled:
        log.info("API keys required on every route but the health checks")
    app = create_rest_app(services, state, settings, api_keys)
    max_connections = connection_bound(settings.max_connections, raise_open_file_limit())
    grpc_server = create_grpc_server(services, state, settings, api_keys, max_connections=max_connections)
    grpc_server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await grpc_server.start()
    rest = _Uvicorn(
        uvicorn.Config(
            app, host=settings.host, port=settings.rest_port, log_level=settings.log_level, lifespan="off",
            # The kit writes one access line per request itself; uvicorn's lines go through the root logger.
            access_log=False, log_config=None,
            timeout_graceful_shutdown=int(CLOSE_S),
            # No limit_concurrency: uvicorn counts open connections in it, idle ones included. Work is admitted
            # by the kit's middleware (max_concurrency); connections are bounded and timed by the protocol.
            http=guarded_h11(max_connections, settings.header_timeout_s),
        )
    )
    rest_task = asyncio.create_task(rest.serve())
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.host)
    log.info("REST on %s:%d, gRPC on %s:%d", settings.host, settings.rest_port, settings.host, settings.grpc_port)

    loader = asyncio.create_task(load_services(services, settings.warmup))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({loader, stopper, rest_task}, return_when=asyncio.FIRST_COMPLETED)
    if loader.done() and loader.exception() is None:
        state.mark_ready()
        await asyncio.wait({stopper, rest_task}, return_when=asyncio.FIRST_COMPLETED)
    failure = loader.exception() if loader.done() else None

    log.info("shutting down: draining %d in-flight requests", state.inflight)
    state.start_draining()
    drained = await state.wait_idle(settings.shutdown_grace_s)
    if not drained:
        log.warning("grace period over with %d requests still in flight", state.inflight)
    for service in services:
        for batcher in service.batchers:
            await batcher.stop()
    await close_runners(services)
    for thread in {id(service.model_thread): service.model_thread for service in services}.values():
        thread.shutdown(wait=False)
    await grpc_server.stop(grace=CLOSE_S - 1)
    rest.should_exit = True
    await rest_task
    if metrics_server is not None:
        metrics_server.shutdown()
    stopper.cancel()
    if failure is not None:
        raise RuntimeError("model loading failed") from failure


def run(create_services: Callable[[], list[Service]], settings: ServiceSettings) -> int:
    """Entry point of `python -m services.<name>` and of the platform: exit 0 after a clean drain."""
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(create_services(), settings))
    except RuntimeError:
        log.exception("server failed")
        return 1
    return 0
