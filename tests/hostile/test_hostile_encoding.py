"""JSON bodies held to UTF-8 before anything parses them, and JSON text inside a form field bounded before it is
parsed.

The JSON limits scan bytes as UTF-8; json.loads also takes UTF-16 and UTF-32, where a character such as `Ģ`
(bytes 22 01 in UTF-16-LE) reads as a quote and hid a million numbers from the count (35 s and +1.1 GiB)."""

import io
import json

import httpx
import numpy as np
import pytest
import soundfile

from services.asr.service import create_service as create_asr
from services.imagegen.service import create_service as create_imagegen
from services.imagegen.settings import ImageGenSettings
from services.kit.testing import ServerThread

GENERATIONS = "/v1/images/generations"
OIP_INFER = "/v2/models/imagegen/infer"
REQUEST = {"prompt": "café ☕ in the rain", "size": "64x64", "steps": 1}
OIP_REQUEST = {
    "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["café ☕"]}],
    "parameters": {"steps": 1},
    "outputs": [{"name": "seeds"}],
}
OTHER_ENCODINGS = ["utf-16-le", "utf-16-be", "utf-16", "utf-32-le", "utf-32"]


@pytest.fixture(scope="module")
def imagegen(models_dir):
    settings = ImageGenSettings(
        model=str(models_dir / "imagegen" / "stable-diffusion"), safety_checker=False, default_steps=1, threads=1,
        log_level="warning", max_wait_ms=0,
    )
    with ServerThread(lambda: [create_imagegen(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def asr(make_asr_settings):
    settings = make_asr_settings(max_wait_ms=0)
    with ServerThread(lambda: [create_asr(settings)], settings) as running:
        yield running


def post_json(server, path: str, body: bytes) -> httpx.Response:
    return httpx.post(
        server.rest_url + path, content=body, headers={"Content-Type": "application/json"}, timeout=120
    )


def error_message(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error if isinstance(error, str) else error["message"]


@pytest.mark.parametrize("encoding", OTHER_ENCODINGS)
@pytest.mark.parametrize("path", [GENERATIONS, OIP_INFER])
def test_json_in_another_unicode_encoding_is_refused(imagegen, path, encoding):
    request = REQUEST if path == GENERATIONS else OIP_REQUEST
    response = post_json(imagegen, path, json.dumps(request, ensure_ascii=False).encode(encoding))
    assert response.status_code == 400, response.text
    assert "UTF-8" in error_message(response)


@pytest.mark.parametrize("path", [GENERATIONS, OIP_INFER])
def test_json_that_is_not_valid_utf8_is_refused(imagegen, path):
    request = REQUEST if path == GENERATIONS else OIP_REQUEST
    # Latin-1 'é' (a lone 0xE9) is not UTF-8.
    response = post_json(imagegen, path, json.dumps(request, ensure_ascii=False).encode("latin-1", "replace"))
    assert response.status_code == 400, response.text
    assert "UTF-8" in error_message(response)


def test_utf16_json_hiding_a_million_numbers_is_refused_by_its_encoding(imagegen):
    # 'Ģ' is 22 01 in UTF-16-LE: the byte scanner took it for a quote and never counted what follows.
    hidden = json.dumps({**REQUEST, "prompt": "Ģ", "numbers": [0] * 1_000_000}, ensure_ascii=False)
    response = post_json(imagegen, GENERATIONS, hidden.encode("utf-16-le"))
    assert response.status_code == 400, response.text
    assert "UTF-16-LE" in error_message(response)


@pytest.mark.parametrize("path", [GENERATIONS, OIP_INFER])
def test_utf8_json_with_non_ascii_text_is_still_served(imagegen, path):
    request = REQUEST if path == GENERATIONS else OIP_REQUEST
    for body in (json.dumps(request, ensure_ascii=False).encode(), b"\xef\xbb\xbf" + json.dumps(request).encode()):
        response = post_json(imagegen, path, body)
        assert response.status_code == 200, response.text


def wav_second() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(16000, dtype=np.float32), 16000, format="WAV")
    return buffer.getvalue()


def test_chunking_strategy_nested_deep_is_a_400_naming_it(asr):
    # JSON text in a form field: 50,000 levels overflowed json.loads' recursion (a 500).
    nested = "[" * 50_000 + "]" * 50_000
    response = httpx.post(
        asr.rest_url + "/v1/audio/transcriptions",
        files={"file": ("clip.wav", wav_second(), "audio/wav")},
        data={"model": "whisper-1", "chunking_strategy": '{"type": ' + nested + "}"},
        timeout=120,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "chunking_strategy" and "nested deeper" in error["message"]
