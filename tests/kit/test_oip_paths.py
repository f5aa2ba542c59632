"""Paths no route serves, and trailing slashes, on the REST port: /v2/... answers in the Open Inference Protocol's
`{"error": "..."}` shape, every other path in the kit's, and nothing is ever redirected (a redirect to an absolute
http:// URL is the wrong scheme behind a TLS-terminating proxy)."""

import sys
from pathlib import Path

import httpx
import pytest

from services.kit import auth
from services.kit.testing import ServerThread

sys.path.insert(0, str(Path(__file__).parent))
from echo_service import EchoSettings, create_service  # noqa: E402

KEY = "paths-test-key"


@pytest.fixture(scope="module")
def server():
    settings = EchoSettings(max_body_bytes=1_000_000)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture
def keyed_server(monkeypatch):
    monkeypatch.setenv(auth.KEYS_ENV, KEY)
    settings = EchoSettings(max_body_bytes=1_000_000)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def request(server, method: str, path: str, **kwargs) -> httpx.Response:
    # httpx follows no redirects unless asked: a 3xx would show here as itself.
    return httpx.request(method, server.rest_url + path, timeout=30, **kwargs)


def assert_oip_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert "location" not in response.headers
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    return body["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/repository/index"),
        ("GET", "/v2/models/echo/nonsense"),
        ("POST", "/v2/models/echo/versions/1/nonsense"),
        ("GET", "/v2/nonsense"),
    ],
)
def test_unknown_oip_paths_answer_404_in_the_protocols_shape(server, method, path):
    message = assert_oip_error(request(server, method, path, json={}), 404)
    assert path in message


def test_server_metadata_answers_on_v2_with_a_trailing_slash(server):
    with_slash = request(server, "GET", "/v2/")
    assert with_slash.status_code == 200, with_slash.text
    assert "location" not in with_slash.headers
    assert with_slash.json() == request(server, "GET", "/v2").json()
    assert with_slash.json()["name"] == "modelserve"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/echo/"),
        ("GET", "/v2/models/echo/ready/"),
        ("GET", "/v2/health/ready/"),
        ("POST", "/v2/models/echo/infer/"),
    ],
)
def test_other_oip_routes_with_a_trailing_slash_are_never_redirected(server, method, path):
    response = request(server, method, path, json={"inputs": []})
    message = assert_oip_error(response, 404)
    assert "trailing slash" in message


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/models/"), ("POST", "/v1/echo/")])
def test_openai_routes_with_a_trailing_slash_get_404_in_the_kits_shape(server, method, path):
    """As OpenAI's own API answers a trailing slash: 404, no redirect to another URL (or scheme)."""
    response = request(server, method, path, json={"text": "hi"})
    assert response.status_code == 404, response.text
    assert "location" not in response.headers
    error = response.json()["error"]
    assert error["code"] == "not_found" and path in error["message"] and "trailing slash" in error["message"]


def test_a_refusal_before_routing_keeps_the_protocols_shape_on_unknown_oip_paths(keyed_server):
    """Without a key, an unknown /v2 path is refused (401) in the protocol's shape, as its routes are."""
    response = request(keyed_server, "POST", "/v2/repository/index")
    message = assert_oip_error(response, 401)
    assert "API key" in message
