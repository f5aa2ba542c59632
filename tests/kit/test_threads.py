"""The model thread gets the configured compute-thread cap (thread pools are sized per thread)."""

import torch

from services.kit.config import ServiceSettings
from services.kit.service import Service


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
