"""Hostile JSON bodies against every JSON route of every service, on the running platform.

A 200,000-deep nesting and bodies of millions of tiny values just under the body limit must each get a
quick 400 whose JSON error names the problem, leave the server answering, and barely move its peak memory:
parsed naively, a 20 MB `{"text": [0, 0, ...]}` kept the translation route busy for over two minutes and 10 GB.
"""

import io
import re
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from services.asr.settings import ASRSettings
from services.imagegen.settings import ImageGenSettings
from services.kit.config import PlatformSettings
from services.translation.settings import TranslationSettings
from services.tts.settings import TTSSettings
from services.vit.settings import ViTSettings

DEPTH = 200_000
MEMORY_BUDGET_MB = 300
SECONDS_BUDGET = 20
VIT_PREDICT = "/v1/models/hf-vit:predict"
# The platform's one app takes the largest body any of its services takes.
PLATFORM_BODY_LIMIT = max(
    settings.model_fields["max_body_bytes"].default
    for settings in (PlatformSettings, TranslationSettings, ASRSettings, TTSSettings, ImageGenSettings)
)
VIT_BODY_LIMIT = ViTSettings.model_fields["max_body_bytes"].default
# Room for the wrapping of the wide bodies, so that they stay under the limit.
MARGIN = 64 * 1024
# Starlette's limit on a multipart text field.
FORM_FIELD_LIMIT = 1024 * 1024


def deep_arrays() -> bytes:
    return b"[" * DEPTH + b"]" * DEPTH


def deep_objects() -> bytes:
    return b'{"a":' * DEPTH + b"0" + b"}" * DEPTH


def wide_object(limit: int) -> bytes:
    """Distinct keys: with unknown fields refused, every one of them would be reported."""
    count = (limit - MARGIN) // len(b'"k0000000":0,')
    return b"{" + b",".join(b'"k%07d":0' % i for i in range(count)) + b"}"


def wide_array(limit: int, field: str) -> bytes:
    """Millions of numbers where strings belong: parsed naively, each one becomes a validation error."""
    count = (limit - MARGIN) // 2
    return b'{"%s":[' % field.encode() + b",".join([b"0"] * count) + b"]}"


DEEP = {"deep arrays": deep_arrays, "deep objects": deep_objects}
NAMES_THE_DEPTH = re.compile(r"deep|depth|nest", re.IGNORECASE)


def json_routes(platform) -> list[tuple[str, str]]:
    """(base url, path) of every operation taking a JSON body, read from the platform's OpenAPI schema."""
    schema = httpx.get(platform.rest_url + "/openapi.json", timeout=30).json()
    routes = [
        (platform.rest_url, path)
        for path, operations in schema["paths"].items()
        for operation in operations.values()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    return [*routes, (platform.vit_rest_url, VIT_PREDICT)]


def first_field(platform, base_url: str, path: str) -> str:
    if path == VIT_PREDICT:
        return "instances"
    schema = httpx.get(base_url + "/openapi.json", timeout=30).json()
    ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    model = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return model["required"][0]


def error_message(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error["message"] if isinstance(error, dict) else error


def attack(platform, url: str, body: bytes) -> tuple[httpx.Response, float, float]:
    baseline = platform.reset_peak_memory()
    started = time.perf_counter()
    response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=120)
    return response, time.perf_counter() - started, platform.peak_growth_mb(baseline)


def assert_still_serving(platform) -> None:
    platform.assert_alive()
    assert httpx.get(platform.rest_url + "/v1/models", timeout=30).status_code == 200
    assert httpx.get(platform.vit_rest_url + "/v1/models/hf-vit", timeout=30).status_code == 200


def test_every_service_has_its_json_routes_attacked(platform):
    paths = {path for _, path in json_routes(platform)}
    assert {"/v1/translate", "/v1/audio/speech", "/v1/images/generations", VIT_PREDICT} <= paths


@pytest.mark.parametrize("shape", DEEP)
def test_deep_nesting_gets_400_naming_the_depth(platform, shape):
    body = DEEP[shape]()
    for base_url, path in json_routes(platform):
        response, seconds, growth = attack(platform, base_url + path, body)
        assert response.status_code == 400, (path, response.text[:300])
        assert NAMES_THE_DEPTH.search(error_message(response)), (path, response.text[:300])
        assert seconds < SECONDS_BUDGET and growth < MEMORY_BUDGET_MB, (path, seconds, growth)
        assert_still_serving(platform)


@pytest.mark.parametrize("shape", ["object", "array"])
def test_millions_of_values_near_the_body_limit_get_400_quickly(platform, shape):
    for base_url, path in json_routes(platform):
        limit = VIT_BODY_LIMIT if path == VIT_PREDICT else PLATFORM_BODY_LIMIT
        body = wide_object(limit) if shape == "object" else wide_array(limit, first_field(platform, base_url, path))
        assert len(body) < limit
        response, seconds, growth = attack(platform, base_url + path, body)
        assert response.status_code == 400, (path, response.text[:300])
        assert error_message(response), path
        assert seconds < SECONDS_BUDGET and growth < MEMORY_BUDGET_MB, (path, seconds, growth)
        assert_still_serving(platform)


# JSON inside a multipart text field: voice conversion takes its speaker embedding as a JSON array.
FORM_FIELD_JSON = {
    "deep": b"[" * (FORM_FIELD_LIMIT // 2 - 1) + b"]" * (FORM_FIELD_LIMIT // 2 - 1),
    "wide strings": b"[" + b",".join([b'"a"'] * (FORM_FIELD_LIMIT // 4 - 1)) + b"]",
}


@pytest.mark.parametrize("shape", FORM_FIELD_JSON)
def test_json_in_a_form_field_is_bounded_before_parsing(platform, shape):
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16000, np.float32), 16000, format="WAV")
    files = {"file": ("speech.wav", buffer.getvalue(), "audio/wav")}
    data = {"speaker_embedding": FORM_FIELD_JSON[shape].decode()}
    baseline = platform.reset_peak_memory()
    started = time.perf_counter()
    response = httpx.post(platform.rest_url + "/v1/audio/conversions", files=files, data=data, timeout=120)
    seconds, growth = time.perf_counter() - started, platform.peak_growth_mb(baseline)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == "speaker_embedding" and "JSON" in error["message"], error
    assert seconds < SECONDS_BUDGET and growth < MEMORY_BUDGET_MB, (seconds, growth)
    assert_still_serving(platform)
