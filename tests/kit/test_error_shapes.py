"""A service's error shape applies to its own routes only, also when it shares a process with others."""

import sys
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter

from services.kit.errors import InvalidArgument
from services.kit.service import Service
from services.kit.testing import ServerThread

sys.path.insert(0, str(Path(__file__).parent))
from echo_service import EchoRunner, EchoSettings, create_service  # noqa: E402


def plain_error_service(settings: EchoSettings) -> Service:
    """A service speaking another protocol's error shape (TF Serving's, say)."""
    router = APIRouter()

    @router.post("/v1/plain")
    async def plain():
        raise InvalidArgument("plain refused")

    return Service(name="plain", settings=settings, runner=EchoRunner(settings), router=router,
                   error_body=lambda error: {"error": error.message})


@pytest.fixture(scope="module")
def server():
    settings = EchoSettings()
    with ServerThread(lambda: [create_service(settings), plain_error_service(settings)], settings) as running:
        yield running


def test_each_service_answers_errors_in_its_own_shape(server):
    plain = httpx.post(f"{server.rest_url}/v1/plain")
    assert plain.status_code == 400 and plain.json() == {"error": "plain refused"}
    echo = httpx.post(f"{server.rest_url}/v1/echo", json={"text": ""})
    assert echo.status_code == 400 and echo.json()["error"]["param"] == "text"
    oip = httpx.post(f"{server.rest_url}/v2/models/nope/infer", json={"inputs": []})
    assert oip.status_code == 404 and isinstance(oip.json()["error"], str)
