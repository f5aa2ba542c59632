"""TRANSLATION_QUANTIZE: int8 models on CPU that still translate, reported in /v1/models; bad values
refused."""

import httpx
import pydantic
import pytest

from services.kit.quantize import is_int8_linear
from services.kit.testing import ServerThread
from services.translation.service import create_service
from services.translation.settings import TranslationSettings


@pytest.mark.parametrize("mode", ["int8", "none"])
def test_the_setting_is_honoured_and_reported(models_dir, mode):
    settings = TranslationSettings(
        models={"en-de": str(models_dir / "translation" / "wmt19-en-de")},
        quantize=mode,
        threads=1,
        log_level="warning",
        default_max_new_tokens=8,
    )
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        model = server.services[0].runner.models["en-de"]
        assert any(is_int8_linear(m) for m in model.modules()) == (mode == "int8")
        answer = httpx.post(
            server.rest_url + "/v1/translate",
            json={"text": "Hello world.", "source_lang": "en", "target_lang": "de"},
            timeout=60,
        )
        assert answer.status_code == 200 and len(answer.json()["translations"]) == 1
        models = httpx.get(server.rest_url + "/v1/models").json()["data"]
        assert [entry["quantization"] for entry in models] == [mode]


def test_an_unknown_value_is_refused_naming_the_field(monkeypatch):
    monkeypatch.setenv("TRANSLATION_QUANTIZE", "int4")
    with pytest.raises(pydantic.ValidationError, match="quantize"):
        TranslationSettings()
