"""What a service hands to the kit: a model runner, its batchers, and its operations bound to each transport:
a REST router, gRPC servicers and Open Inference Protocol models.

A service's `create_service` builds one `Service` and never touches server start-up, health or metrics.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from fastapi import APIRouter

from .batcher import DynamicBatcher
from .compute import ModelThread, limit_threads
from .config import ServiceSettings
from .continuous import ContinuousBatcher, StepDecoder
from .errors import ServiceError
from .oip import ModelSource


class ModelRunner(Protocol):
    def load(self) -> None:
        """Load weights (blocking; runs in a worker thread at start-up)."""

    def warmup(self) -> None:
        """Run a representative request so the first real one is not slow."""

    # Optional: `close(self) -> None` runs in the model thread once the server has drained (stop background
    # threads, release files and device memory).


@dataclass
class GrpcServicer:
    add_to_server: Callable[[Any, Any], None]  # the generated add_XServicer_to_server
    servicer: Any
    service_name: str  # full proto name, e.g. "translation.v1.Translation": health + reflection


@dataclass
class Service:
    name: str
    settings: ServiceSettings
    runner: ModelRunner
    router: APIRouter | None = None
    grpc: list[GrpcServicer] = field(default_factory=list)
    batchers: list[DynamicBatcher] = field(default_factory=list)
    # Entries for GET /v1/models (OpenAI's list shape), which the kit serves for all services at once
    # so that several OpenAI-compatible services can share one port.
    models: Callable[[], list[dict]] = lambda: []
    # A service speaking another protocol's error shape (TF Serving: {"error": "..."}) sets this;
    # it then applies to every REST error of the process that serves it.
    error_body: Callable[[ServiceError], dict] | None = None
    # Further paths of the service's routers that serve Prometheus metrics (TF Serving's, say): like /metrics
    # they answer while loading, stay out of the request metrics and need a key only when keys are on.
    metrics_paths: tuple[str, ...] = ()
    # Models served over the Open Inference Protocol (/v2, inference.GRPCInferenceService), which the kit serves
    # for all services of a process at once; a function in place of a model answers the models served at the
    # moment, for a service whose models change while it serves.
    oip: list[ModelSource] = field(default_factory=list)
    _model_thread: ModelThread | None = field(default=None, init=False, repr=False)

    @property
    def model_thread(self) -> ModelThread:
        """The one thread that loads, warms up and runs this service's models (all its batchers).

        OpenMP (torch's CPU kernels) keeps a thread pool per calling thread: a second thread running
        torch adds a second pool on the same cores, and once the pools outnumber the cores OpenMP stops
        spin-waiting and every small parallel op pays a wake-up (whisper-base decoding measured 40%
        slower after model loading had run in another thread). The thread cap applies inside it.
        """
        if self._model_thread is None:
            self._model_thread = ModelThread(f"model-{self.name}", initializer=self.thread_initializer())
        return self._model_thread

    def thread_initializer(self) -> Callable[[], None]:
        return partial(limit_threads, self.settings.threads)

    def use_model_thread(self, thread: ModelThread) -> None:
        """Run this service (all its batchers) in `thread`, e.g. one shared by every service of a process."""
        self._model_thread = thread
        for batcher in self.batchers:
            batcher.run_in(thread)

    def batcher(
        self, name: str, predict_batch, *, decoder: StepDecoder | None = None, **overrides
    ) -> DynamicBatcher:
        """A batcher configured from this service's settings, running in its model thread, registered for
        shutdown; with a `decoder`, one that batches step-decodable requests continuously."""
        s = self.settings
        options = dict(
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            wait_when_idle=s.wait_when_idle,
            max_queue=s.max_queue,
            timeout_s=s.request_timeout_s,
            retry_after_s=s.retry_after_s,
            max_request_cost=s.max_request_cost,
            max_batch_cost=s.max_batch_cost,
            max_queued_bytes=s.max_queued_bytes,
            cost_setting=f"{s.model_config.get('env_prefix', '')}MAX_REQUEST_COST",
            executor=self.model_thread,
        )
        options.update(overrides)
        if decoder is not None:
            batcher = ContinuousBatcher(
                f"{self.name}.{name}", predict_batch, decoder, owner=self.name, **options
            )
        else:
            batcher = DynamicBatcher(f"{self.name}.{name}", predict_batch, owner=self.name, **options)
        self.batchers.append(batcher)
        return batcher
