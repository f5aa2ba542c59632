"""The TF Serving-compatible server for the kit: runner, batcher, TF Serving's REST and gRPC APIs, and OIP.

Named server.py, not service.py: the platform imports services/<name>/service.py into its own process,
while this one runs TensorFlow in a process of its own (`python -m services.vit`).
"""

from concurrent.futures import ThreadPoolExecutor

from services.kit.service import Service

from . import schemas
from .grpc_servicer import grpc_servicers
from .limits import RequestLimits
from .oip import oip_models
from .rest import MONITORING_PATH, rest_router
from .runner import ViTRunner
from .settings import ViTSettings


def create_service(settings: ViTSettings | None = None) -> Service:
    settings = settings or ViTSettings()
    runner = ViTRunner(settings)
    service = Service(
        name="vit",
        settings=settings,
        runner=runner,
        error_body=schemas.error_body,
        metrics_paths=(MONITORING_PATH,),
    )
    # One batcher for every model version and signature: the batch key keeps them apart.
    batcher = service.batcher("predict", runner.predict_batch)
    limits = RequestLimits.from_settings(settings)
    # Request parsing and tensor conversion for REST and gRPC: neither the event loop nor the model thread.
    decoder = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="vit-decode")
    service.router = rest_router(runner, batcher, limits, decoder)
    service.grpc += grpc_servicers(runner, batcher, limits, decoder)
    service.models = lambda: [
        {"id": name, "versions": versions, "protocol": "tensorflow-serving"}
        for name, versions in sorted(runner.available_versions().items())
    ]
    service.oip.append(oip_models(runner, batcher, limits, decoder))
    return service
