"""OpenAI image requests are refused before any work when their images could not fit the response limit: sizes
are resized up to what the OpenAI model names (gpt-image-2 takes up to 3840x2160), whatever the render size."""

import httpx
import pytest

from services.imagegen.service import create_service
from services.kit.testing import ServerThread

LIMIT = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def server(make_settings):
    settings = make_settings(max_response_bytes=LIMIT, max_pixels=16384)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def generate(server, **body) -> httpx.Response:
    return httpx.post(server.rest_url + "/v1/images/generations", json={"prompt": "a cat", **body}, timeout=120)


def test_images_that_could_not_fit_the_response_limit_are_refused_before_any_work(server):
    response = generate(server, model="gpt-image-2", size="3840x2160")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "size" and "IMAGEGEN_MAX_RESPONSE_BYTES" in error["message"]
    refused_n = generate(server, model="dall-e-2", size="1024x1024", n=2)
    assert refused_n.status_code == 400 and refused_n.json()["error"]["param"] == "size", refused_n.text


def test_images_within_the_response_limit_are_made_at_the_size_named(server):
    response = generate(server, model="dall-e-2", size="1024x1024", response_format="b64_json")
    assert response.status_code == 200, response.text
    assert response.headers["x-modelserve-image-size"] != "1024x1024"  # rendered small, resized up
