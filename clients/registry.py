"""What a service's client module declares so that the platform clients carry it.

Each service's client module in this package ends with `SERVICE_CLIENTS = ServiceClients(...)`;
`Client`, `AsyncClient` and `GrpcClient` (client.py) find those modules by folder and attach one of
each as `client.<attribute>`, so a new service's client is one new module here and no edit elsewhere.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceClients:
    attribute: str  # the platform client's attribute, e.g. client.translation
    rest: type  # built with a RestTransport
    async_rest: type  # built with an AsyncRestTransport
    grpc: type  # built with a GrpcCaller
    # Served by its own server on the ViT ports (vit_url / vit_target), not the platform's.
    own_ports: bool = False
