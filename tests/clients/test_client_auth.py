"""API keys end to end: a server with MODELSERVE_API_KEYS set, the clients and the CLI against it."""

import asyncio

import grpc
import pytest

from clients import AsyncClient, AuthenticationError, Client, GrpcClient
from clients.auth import API_KEY_ENV
from clients.cli import EXIT_SERVER_ERROR, EXIT_USAGE, main
from clients.grpc_channel import GrpcCaller
from services.kit.testing import ServerThread
from services.translation.service import create_service
from services.translation.settings import TranslationSettings

KEY = "test-key-0123456789"
OTHER_KEY = "second-key-abcdef"


@pytest.fixture(scope="module")
def server(models_dir):
    pairs = {"en-de": str(models_dir / "translation" / "wmt19-en-de")}
    settings = TranslationSettings(models=pairs, log_level="warning", default_max_new_tokens=6)
    with pytest.MonkeyPatch.context() as patch:
        # The kit reads the keys when the server is created.
        patch.setenv("MODELSERVE_API_KEYS", f"{KEY},{OTHER_KEY}")
        patch.delenv("MODELSERVE_API_KEYS_FILE", raising=False)
        with ServerThread(lambda: [create_service(settings)], settings) as running:
            yield running


@pytest.fixture(autouse=True)
def no_key_in_the_environment(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)


def translate(client) -> str:
    return client.translation.translate("Hello world.", source_lang="en", target_lang="de").text


def test_rest_without_a_key_is_refused_with_a_clear_error(server):
    with Client(server.rest_url, timeout=30) as client, pytest.raises(AuthenticationError) as caught:
        translate(client)
    error = caught.value
    assert error.status == 401 and error.code == "invalid_api_key"
    assert f"no API key sent: set {API_KEY_ENV}" in str(error)


def test_rest_with_a_wrong_key_is_refused(server):
    with Client(server.rest_url, timeout=30, api_key="not-a-key") as client:
        with pytest.raises(AuthenticationError, match="the API key sent was refused") as caught:
            translate(client)
    assert caught.value.status == 401


def test_rest_with_the_key_succeeds(server):
    with Client(server.rest_url, timeout=30, api_key=KEY) as client:
        assert translate(client)
        assert {m.pair for m in client.translation.models()} == {"en-de"}
    with Client(server.rest_url, timeout=30, api_key=OTHER_KEY) as client:  # every configured key works
        assert translate(client)


def test_rest_takes_the_key_from_the_environment(server, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, KEY)
    with Client(server.rest_url, timeout=30) as client:
        assert translate(client)
    # An explicit empty key means none, whatever the environment says.
    with Client(server.rest_url, timeout=30, api_key="") as client, pytest.raises(AuthenticationError):
        translate(client)


def test_explicit_authorization_header_wins_over_the_environment(server, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "not-a-key")
    with Client(server.rest_url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as client:
        assert translate(client)


def test_async_rest_sends_the_key(server):
    async def both():
        async with AsyncClient(server.rest_url, timeout=30) as anonymous:
            with pytest.raises(AuthenticationError):
                await anonymous.translation.translate("Hello", source_lang="en", target_lang="de")
        async with AsyncClient(server.rest_url, timeout=30, api_key=KEY) as client:
            return await client.translation.translate("Hello", source_lang="en", target_lang="de")

    assert asyncio.run(both()).text


def test_grpc_without_a_key_is_refused_with_a_clear_error(server):
    with GrpcClient(server.grpc_target, timeout=30) as client, pytest.raises(AuthenticationError) as caught:
        translate(client)
    assert caught.value.grpc_code == grpc.StatusCode.UNAUTHENTICATED
    assert f"no API key sent: set {API_KEY_ENV}" in str(caught.value)
    with GrpcClient(server.grpc_target, timeout=30, api_key="not-a-key") as client:
        with pytest.raises(AuthenticationError, match="the API key sent was refused"):
            client.translation.models()


def test_grpc_with_the_key_succeeds_on_every_call(server, monkeypatch):
    with GrpcClient(server.grpc_target, timeout=30, api_key=KEY) as client:
        assert translate(client)
        assert {m.pair for m in client.translation.models()} == {"en-de"}
    monkeypatch.setenv(API_KEY_ENV, OTHER_KEY)
    with GrpcClient(server.grpc_target, timeout=30) as client:
        assert translate(client)


def test_grpc_health_stays_open_for_probes(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with GrpcCaller(server.grpc_target, timeout=10, api_key="") as caller:
        stub = health_pb2_grpc.HealthStub(caller.channel)
        answer = caller.unary(stub.Check, health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_key_no_header_can_carry_is_refused_before_sending():
    with pytest.raises(ValueError, match="printable ASCII"):
        Client("http://127.0.0.1:9", api_key="two\nlines")
    with pytest.raises(ValueError, match="printable ASCII"):
        GrpcClient("127.0.0.1:9", api_key="with space")


def test_cli_sends_the_key(server, monkeypatch, capsys):
    connection = ["--url", server.rest_url, "--grpc", server.grpc_target]
    command = ["translate", "Hello world.", "--from", "en", "--to", "de"]
    for protocol in ("rest", "grpc"):
        assert main([*connection, "--protocol", protocol, *command]) == EXIT_SERVER_ERROR
        err = capsys.readouterr().err
        assert err.startswith("modelserve: authentication failed:") and API_KEY_ENV in err
        assert main([*connection, "--protocol", protocol, "--api-key", KEY, *command]) == 0
        assert capsys.readouterr().out.strip()
    monkeypatch.setenv(API_KEY_ENV, KEY)
    assert main([*command, *connection]) == 0
    monkeypatch.setenv(API_KEY_ENV, "bad key")
    assert main([*connection, *command]) == EXIT_USAGE
    assert "printable ASCII" in capsys.readouterr().err
