"""Settings shared by every service; each service subclasses with its own env prefix.

pydantic-settings reads `<PREFIX><FIELD>` from the environment (case-insensitive), so the same
class configures a local run, a container and a Kubernetes ConfigMap.
"""

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """What one serving process honours whatever it serves: ports, limits on what clients send, logs, drain,
    and how services sharing the process share the machine."""

    model_config = SettingsConfigDict(env_prefix="SERVER_", extra="ignore", protected_namespaces=())

    threads: int | None = Field(
        None,
        description="CPU threads for the model; None leaves the library default (one fewer for the all-in-one "
        "platform's shared model thread on CPU: see services/kit/compute.py)",
    )
    warmup: bool = True
    compute_sharing: Literal["auto", "separate"] = Field(
        "auto", description="services sharing a process: auto = one model thread on CPU, GPU slots on a GPU; "
        "separate = each service its own model thread and thread pool (for machines with cores to spare)"
    )
    compute_quantum_ms: float = Field(
        50.0, gt=0, description="services sharing a process on CPU share one model thread; a model call that has "
        "run this long lets the others' waiting calls run at its next step"
    )
    gpu_concurrency: int = Field(
        2, ge=1, description="services sharing a process on a GPU: model calls allowed to run at once"
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503/429")
    max_concurrency: int = Field(
        128, ge=1, description="requests handled at once per process (REST and gRPC each); beyond it 503"
    )
    body_timeout_s: float = Field(60.0, gt=0, description="a request body still arriving after this gets 408")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a REST connection that has not sent a complete request head this long after it "
        "opened or after its previous response is closed (408 if part of a head came); gRPC: the HTTP/2 handshake"
    )
    max_connections: int = Field(
        4096, ge=1, description="open connections per process and protocol (lowered to a third of the open-file "
        "limit); beyond it REST closes the connection that has waited longest for a request head (the new one "
        "when none waits) and gRPC refuses new ones"
    )
    grpc_max_streams_per_connection: int = Field(
        100, ge=1, description="concurrent RPCs one gRPC connection may open (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)"
    )
    grpc_max_health_watches: int = Field(
        32, ge=1, description="open grpc.health.v1.Health/Watch streams (they need no key and never end); beyond "
        "it RESOURCE_EXHAUSTED. They never take the slots of max_concurrency"
    )
    grpc_keepalive_time_s: float = Field(
        60.0, gt=0, description="the server pings each gRPC connection this often to find dead peers (and end "
        "their streams), closing it when no answer comes within grpc_keepalive_timeout_s"
    )
    grpc_keepalive_timeout_s: float = Field(20.0, gt=0)
    grpc_min_ping_interval_s: float = Field(
        10.0, gt=0, description="clients pinging more often than this (or at all without an RPC open) earn a "
        "strike; after grpc_max_ping_strikes the connection is closed (GOAWAY too_many_pings)"
    )
    grpc_max_ping_strikes: int = Field(2, ge=0)
    grpc_max_connection_idle_s: float = Field(
        300.0, gt=0, description="a gRPC connection without an RPC this long is closed (clients reconnect)"
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="REST bodies above this get 413")
    max_json_depth: int = Field(32, ge=1, description="JSON bodies nested deeper get 400 before parsing")
    max_json_elements: int = Field(
        10_000, ge=1, description="JSON bodies with more strings, arrays, objects and commas get 400 before parsing"
    )
    grpc_max_message_bytes: int = Field(32 * 1024 * 1024, ge=4 * 1024 * 1024)
    max_response_bytes: int = Field(
        128 * 1024 * 1024, ge=1024 * 1024, description="REST Open Inference Protocol requests whose response could "
        "exceed this (from the request's parameters and outputs, before compute) get 400; gRPC's bound is "
        "grpc_max_message_bytes"
    )
    host: str = "0.0.0.0"
    rest_port: int = 8000
    grpc_port: int = 50051
    shutdown_grace_s: float = Field(20.0, ge=0, description="drain time for in-flight requests after SIGTERM")
    log_level: str = "info"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="log lines as JSON or text; auto: JSON unless stderr is a terminal (containers get JSON)"
    )
    docs: bool = Field(True, description="serve /docs, /redoc and /openapi.json")
    grpc_reflection: bool = Field(True, description="serve the gRPC reflection service")
    metrics_port: int | None = Field(None, description="serve /metrics on this port instead of the REST port")
    playground: bool = Field(
        True, description="serve the browser playground at /playground (a page calling this server's public "
        "APIs; off in the production overlays); off: 404"
    )
    playground_tf_serving_url: str = Field(
        "", description="the TensorFlow Serving REST base URL the playground's vision panel calls; empty: this "
        "server when it serves ViT, else port 8501 of the host the page came from"
    )
    cors_origins: str = Field(
        "", description="comma-separated browser origins (or *) allowed to call the REST API from other sites' "
        "pages; pages from this server's own host on another port (the platform's playground calling ViT) are "
        "allowed while the playground is on"
    )


class ServiceSettings(ServerSettings):
    """A service's model and batching on top of its process's settings (a service alone is its own server)."""

    model_config = SettingsConfigDict(env_prefix="SERVICE_", extra="ignore", protected_namespaces=())

    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    dtype: str = Field("auto", description="auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16")
    few_row_linears: bool = Field(
        True,
        description="on CPU in float32, compute decoding's few-row vocabulary projections (16M+ weights) as "
        "weight @ x.T (kit.torch_models.FewRowLinear: Whisper's head 1.5-2x faster on AMD EPYC); false keeps "
        "torch's kernels",
    )
    max_batch_size: int = Field(8, ge=1)
    max_wait_ms: float = Field(
        5.0, ge=0, description="how long the batcher waits to fill a batch while the model is busy"
    )
    wait_when_idle: bool = Field(
        False, description="also wait max_wait_ms for company when the model is idle (TF Serving's batch "
        "timeout); by default an idle model starts a lone request at once"
    )
    max_queue: int = Field(64, ge=1, description="queued requests beyond this are refused with 503")
    request_timeout_s: float = Field(60.0, gt=0, description="a request still unanswered after this gets 504")
    max_request_cost: float | None = Field(
        None, gt=0, description="a request whose cost (units per service) exceeds this gets 400; None = no budget"
    )
    max_batch_cost: float | None = Field(
        None, gt=0, description="a batch stops taking requests once their summed cost would exceed this "
        "(a lone request always runs); None = no cap"
    )
    max_queued_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="payload bytes waiting in a batcher's queue; beyond it 503"
    )
    liveness_stall_s: float = Field(
        600.0, gt=0, description="/healthz fails while a batch has run this long without a progress beat"
    )


class PlatformSettings(ServerSettings):
    """The all-in-one local platform: one REST and one gRPC port for every service. Model and batching
    settings stay with each service's own prefix (`TRANSLATION_MAX_BATCH_SIZE`...), so none are offered here."""

    model_config = SettingsConfigDict(env_prefix="PLATFORM_", extra="ignore", protected_namespaces=())

    services: str = Field("all", description="comma-separated service names to start, or 'all'")
