"""One model thread per service: it loads, warms up and runs every request (OpenMP keeps a thread pool per
calling thread), with the configured compute-thread cap (pool sizes are per thread too)."""

import sys
import threading
from pathlib import Path

import httpx
import torch

from services.kit.config import ServiceSettings
from services.kit.service import Service
from services.kit.testing import ServerThread

sys.path.insert(0, str(Path(__file__).parent))
from echo_service import EchoSettings, create_service  # noqa: E402


async def test_batcher_worker_thread_runs_with_the_configured_thread_count():
    service = Service(name="threads", settings=ServiceSettings(threads=1), runner=None)
    batcher = service.batcher("probe", lambda works: [torch.get_num_threads() for _ in works])
    assert await batcher.submit(None) == 1
    await batcher.stop()
    unlimited = Service(name="free", settings=ServiceSettings(), runner=None).batcher(
        "probe", lambda works: [torch.get_num_threads() for _ in works]
    )
    assert await unlimited.submit(None) == torch.get_num_threads()
    await unlimited.stop()


def test_loading_warm_up_and_requests_share_the_services_model_thread():
    settings = EchoSettings()
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        for text in ("one", "two", "three"):
            assert httpx.post(f"{server.rest_url}/v1/echo", json={"text": text}).json() == {"echo": text}
        runner = server.services[0].runner
        assert runner.threads["load"] == runner.threads["warmup"] == runner.threads["predict"]
        (model_thread,) = runner.threads["predict"]
        assert model_thread != threading.get_ident()
        assert not runner.threads["close"]
    # The drain closes the runner, in the same thread.
    assert runner.threads["close"] == {model_thread}
