"""One object per protocol for the whole platform: `Client` (REST), `AsyncClient`, `GrpcClient`.

Each carries every service client this package declares (clients/registry.py: a service's client
module ends with `SERVICE_CLIENTS`), found by folder. The platform serves translation, ASR, TTS and
image generation on one REST port and one gRPC port; ViT speaks the TensorFlow Serving protocol on its own ports (8501 REST, 8500 gRPC by
default, derived from the platform address unless given). Every client sends the API key given as
`api_key`, else `$MODELSERVE_API_KEY` (clients/auth.py), to both.
"""

import importlib
import pkgutil
from urllib.parse import urlsplit, urlunsplit

import httpx

import clients

from .grpc_channel import GrpcCaller
from .listing import ModelEntry, parse_models
from .registry import ServiceClients
from .rest import AsyncRestTransport, RestTransport
from .retry import RetryPolicy

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_GRPC_TARGET = "127.0.0.1:50051"
VIT_REST_PORT = 8501
VIT_GRPC_PORT = 8500
# This module and the command line that imports it declare no service client.
NOT_SERVICE_MODULES = frozenset({__name__.rsplit(".", 1)[-1], "cli", "__main__"})


def service_clients() -> list[ServiceClients]:
    """Every service client declared in this package (a module's `SERVICE_CLIENTS`), by attribute."""
    found = []
    for module in pkgutil.iter_modules(clients.__path__):
        if module.name not in NOT_SERVICE_MODULES:
            declared = getattr(importlib.import_module(f"clients.{module.name}"), "SERVICE_CLIENTS", None)
            if declared is not None:
                found.append(declared)
    return sorted(found, key=lambda declared: declared.attribute)


def with_port(url_or_target: str, port: int) -> str:
    """The same host on another port: for "http://h:8000" and for a gRPC target "h:50051"."""
    if "://" in url_or_target:
        parts = urlsplit(url_or_target)
        return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}", path=""))
    host = url_or_target.rsplit(":", 1)[0] if ":" in url_or_target else url_or_target
    return f"{host}:{port}"


def _attach_service_clients(owner: object, kind: str, platform: object, own_ports: object) -> None:
    """One client per declared service (its `rest`, `async_rest` or `grpc` class) on the platform's
    transport, or on ViT's own ports' one."""
    for declared in service_clients():
        transport = own_ports if declared.own_ports else platform
        setattr(owner, declared.attribute, getattr(declared, kind)(transport))


class _RestPlatformClient:
    """What `Client` and `AsyncClient` share: two transports (platform and ViT ports) and the services."""

    transport_class: type[RestTransport] | type[AsyncRestTransport]
    service_kind: str  # the ServiceClients field: "rest" or "async_rest"

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        vit_url: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
        api_key: str | None = None,
    ):
        options = dict(timeout=timeout, retry=retry, headers=headers, api_key=api_key)
        self.transport = self.transport_class(base_url, **options)
        self.vit_transport = self.transport_class(vit_url or with_port(base_url, VIT_REST_PORT), **options)
        _attach_service_clients(self, self.service_kind, self.transport, self.vit_transport)


class Client(_RestPlatformClient):
    """Blocking REST client: `with Client("http://host:8000") as c: c.translation.translate(...)`."""

    transport_class = RestTransport
    service_kind = "rest"

    def models(self) -> list[ModelEntry]:
        """Every model the platform serves (GET /v1/models)."""
        return parse_models(self.transport.request("GET", "/v1/models").json())

    def close(self) -> None:
        self.transport.close()
        self.vit_transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_RestPlatformClient):
    """asyncio REST client: `async with AsyncClient(url) as c: await c.translation.translate(...)`."""

    transport_class = AsyncRestTransport
    service_kind = "async_rest"

    async def models(self) -> list[ModelEntry]:
        return parse_models((await self.transport.request("GET", "/v1/models")).json())

    async def close(self) -> None:
        await self.transport.close()
        await self.vit_transport.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class GrpcClient:
    """Blocking gRPC client: `with GrpcClient("host:50051") as c: c.translation.translate(...)`."""

    def __init__(
        self,
        target: str = DEFAULT_GRPC_TARGET,
        *,
        vit_target: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
        secure: bool = False,
        api_key: str | None = None,
    ):
        options = dict(timeout=timeout, retry=retry, metadata=metadata, secure=secure, api_key=api_key)
        self.caller = GrpcCaller(target, **options)
        self.vit_caller = GrpcCaller(vit_target or with_port(target, VIT_GRPC_PORT), **options)
        _attach_service_clients(self, "grpc", self.caller, self.vit_caller)

    def close(self) -> None:
        self.caller.close()
        self.vit_caller.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
