"""TTS_QUANTIZE: an int8 acoustic model on CPU that still speaks, reported in /v1/models; bad values
refused."""

import httpx
import pydantic
import pytest

from services.kit.quantize import is_int8_linear
from services.kit.testing import ServerThread
from services.tts.service import create_service
from services.tts.settings import TTSSettings


def test_int8_acoustic_model_speaks_and_is_reported(make_tts_settings):
    settings = make_tts_settings(quantize="int8")
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        runner = server.services[0].runner
        assert any(is_int8_linear(m) for m in runner.tts.modules())
        assert not any(is_int8_linear(m) for m in runner.vc.modules())
        answer = httpx.post(
            server.rest_url + "/v1/audio/speech",
            json={"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": "wav"},
            timeout=60,
        )
        assert answer.status_code == 200 and answer.content[:4] == b"RIFF"
        models = {entry["task"]: entry for entry in httpx.get(server.rest_url + "/v1/models").json()["data"]}
        assert models["text-to-speech"]["quantization"] == "int8"


def test_float_by_default_on_the_shared_server(tts_server):
    runner = tts_server.services[0].runner
    assert runner.quantization == "none" and not any(is_int8_linear(m) for m in runner.tts.modules())
    models = {entry["task"]: entry for entry in httpx.get(tts_server.rest_url + "/v1/models").json()["data"]}
    assert models["text-to-speech"]["quantization"] == "none"


def test_an_unknown_value_is_refused_naming_the_field():
    with pytest.raises(pydantic.ValidationError, match="quantize"):
        TTSSettings(quantize="fp8")
