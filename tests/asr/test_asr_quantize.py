"""ASR_QUANTIZE: an int8 main model on CPU beside the drafter, on both decoding paths, reported in
/v1/models; bad values refused."""

import httpx
import pydantic
import pytest

from services.asr.service import create_service
from services.asr.settings import ASRSettings
from services.kit.quantize import is_int8_linear
from services.kit.testing import ServerThread


def test_int8_main_model_transcribes_on_both_paths(make_asr_settings, audio_file):
    settings = make_asr_settings(quantize="int8")
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        runner = server.services[0].runner
        assert is_int8_linear(runner.model.model.encoder.layers[0].fc1)
        assert is_int8_linear(runner.model.model.decoder.layers[0].encoder_attn.k_proj)
        assert not any(
            is_int8_linear(m) for m in runner.assistant.modules()
        )  # the drafter keeps its own copy
        clip = audio_file(3, seed=5)
        for decoding in ("plain", "assisted"):
            answer = httpx.post(
                server.rest_url + "/v1/audio/transcriptions",
                data={"decoding": decoding, "language": "en"},
                files={"file": ("clip.wav", clip, "audio/wav")},
                timeout=120,
            )
            assert (
                answer.status_code == 200 and answer.json()["decoding"] == decoding and answer.json()["text"]
            )
        # No token-for-token equality of the paths here: int8 activations are scaled per call, so a step that
        # verifies several drafted tokens rounds differently from single-token steps (see bench_quantize.py).
        [model] = httpx.get(server.rest_url + "/v1/models").json()["data"]
        assert model["quantization"] == "int8"


def test_an_unknown_value_is_refused_naming_the_field(monkeypatch):
    monkeypatch.setenv("ASR_QUANTIZE", "yes")
    with pytest.raises(pydantic.ValidationError, match="quantize"):
        ASRSettings()
