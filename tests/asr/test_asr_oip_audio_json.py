"""Audio over the Open Inference Protocol's JSON form: the "asr" model's BYTES "audio" input takes base64 text (JSON
strings cannot carry raw bytes), as its metadata declares, transcribed exactly as the same file sent as binary
tensor data; bad or oversized base64 is refused naming the input, the size before any decoding."""

import base64

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from services.asr.service import create_service
from services.kit.testing import ServerThread

# The audio file cap (ASR's max_body_bytes) below the server's body limit, as on the platform port, where one
# body limit serves every service.
AUDIO_CAP = 256 * 1024
SERVER_BODY_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(make_asr_settings):
    settings = make_asr_settings(max_body_bytes=AUDIO_CAP)
    server_settings = settings.model_copy(update={"max_body_bytes": SERVER_BODY_LIMIT})
    with ServerThread(lambda: [create_service(settings)], server_settings) as running:
        yield running


@pytest.fixture(scope="module")
def http_client(server):
    return triton_http.InferenceServerClient(server.rest_url.removeprefix("http://"), network_timeout=120)


def audio_input(content, binary_data: bool):
    tensor = triton_http.InferInput("audio", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([content], dtype=np.object_), binary_data=binary_data)
    return tensor


def infer_json(server, audio_text: str) -> httpx.Response:
    document = {
        "inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": [audio_text]}],
        "parameters": {"language": "en"},
    }
    return httpx.post(f"{server.rest_url}/v2/models/asr/infer", json=document, timeout=120)


def test_metadata_declares_the_audio_input_base64_in_json(http_client):
    inputs = {tensor["name"]: tensor for tensor in http_client.get_model_metadata("asr")["inputs"]}
    assert inputs["audio"]["parameters"] == {"content_type": "base64"}
    assert "parameters" not in inputs["audio_samples"]


def test_base64_audio_in_json_transcribes_as_the_binary_file_does(server, http_client, audio_file):
    content = audio_file(2, seed=71)
    parameters = {"language": "en"}
    binary = http_client.infer("asr", [audio_input(content, binary_data=True)], parameters=parameters)
    # tritonclient sends BYTES elements as JSON strings with binary_data=False: the file's base64 text.
    as_json = http_client.infer(
        "asr", [audio_input(base64.b64encode(content), binary_data=False)], parameters=parameters
    )
    assert as_json.as_numpy("text").tolist() == binary.as_numpy("text").tolist()
    assert binary.as_numpy("text")[0]
    assert as_json.as_numpy("duration").tolist() == pytest.approx([2.0])
    # Unpadded base64 (as many encoders write it) reads the same.
    plain = infer_json(server, base64.b64encode(content).decode().rstrip("="))
    assert plain.status_code == 200, plain.text
    text_output = next(output for output in plain.json()["outputs"] if output["name"] == "text")
    assert text_output["data"] == [binary.as_numpy("text")[0].decode()]


@pytest.mark.parametrize("text", ["not base64 at all!", "UklGRg==\nAAAA", "UklGR-_A"])
def test_text_that_is_not_base64_gets_400_naming_the_input(server, text):
    response = infer_json(server, text)
    assert response.status_code == 400, response.text
    assert "input 'audio'" in response.json()["error"] and "base64" in response.json()["error"]


def test_oversized_base64_is_refused_from_its_length_before_decoding(server):
    """Base64 text that would decode past the audio cap gets 413; its last character is not base64, so a server
    that decoded it first would answer that error instead."""
    oversized = "A" * (AUDIO_CAP * 4 // 3 + 8) + "!"
    response = infer_json(server, oversized)
    assert response.status_code == 413, response.text
    message = response.json()["error"]
    assert "input 'audio'" in message and f"the limit is {AUDIO_CAP}" in message
