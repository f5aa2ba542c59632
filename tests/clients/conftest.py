"""The SDK's sync REST and gRPC clients for the test module's own `server` fixture."""

import pytest

from clients import Client, GrpcClient


@pytest.fixture(scope="module")
def rest(server):
    with Client(server.rest_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(server):
    with GrpcClient(server.grpc_target, timeout=120) as client:
        yield client
