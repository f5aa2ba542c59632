"""ASR over the Open Inference Protocol, driven by Triton's own clients (HTTP and gRPC): an audio file or raw
samples in, the same transcript as the REST route out; window deltas over ModelStreamInfer; hostile inputs
refused before decoding, naming the problem."""

import io
import json
import queue
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from services.asr.service import create_service
from services.asr.settings import ASRSettings
from services.kit.testing import ServerThread

MAX_AUDIO_SECONDS = 90
MAX_SAMPLE_RATE = 48000


@pytest.fixture(scope="module")
def server(make_asr_settings):
    settings = make_asr_settings(max_audio_seconds=MAX_AUDIO_SECONDS, max_sample_rate=MAX_SAMPLE_RATE)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def http_client(server):
    return triton_http.InferenceServerClient(server.rest_url.removeprefix("http://"), network_timeout=120)


@pytest.fixture(scope="module")
def grpc_client(server):
    return triton_grpc.InferenceServerClient(server.grpc_target)


@pytest.fixture(params=["http", "grpc"])
def client(request, http_client, grpc_client):
    return (triton_http, http_client) if request.param == "http" else (triton_grpc, grpc_client)


def rest(server, content: bytes, route: str = "transcriptions", **data) -> dict:
    files = {"file": ("clip.wav", content, "audio/wav")}
    response = httpx.post(f"{server.rest_url}/v1/audio/{route}", data=data, files=files, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def file_input(module, content: bytes):
    tensor = module.InferInput("audio", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([content], dtype=np.object_))
    return tensor


def samples_input(module, samples: np.ndarray):
    tensor = module.InferInput("audio_samples", [samples.size], "FP32")
    tensor.set_data_from_numpy(samples.astype(np.float32))
    return tensor


def text(result, name: str = "text") -> str:
    return result.as_numpy(name)[0].decode()


def test_metadata_tells_a_client_what_to_send(http_client, grpc_client):
    assert http_client.is_model_ready("asr") and grpc_client.is_model_ready("asr")
    metadata = http_client.get_model_metadata("asr")
    assert metadata["inputs"] == [
        # In a JSON request the file's base64 text (binary tensor data and gRPC carry it raw).
        {"name": "audio", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"}},
        {"name": "audio_samples", "datatype": "FP32", "shape": [-1]},
    ]
    outputs = {output["name"]: output["datatype"] for output in metadata["outputs"]}
    assert outputs["text"] == "BYTES" and outputs["duration"] == "FP32" and "segments" in outputs
    over_grpc = grpc_client.get_model_metadata("asr", as_json=True)
    assert [tensor["name"] for tensor in over_grpc["inputs"]] == ["audio", "audio_samples"]


def test_audio_file_transcribes_as_rest_does(server, client, audio_file):
    module, triton = client
    content = audio_file(3, seed=61)
    result = triton.infer("asr", [file_input(module, content)], parameters={"language": "en"})
    expected = rest(server, content, language="en")
    assert text(result) == expected["text"] and expected["text"]
    assert text(result, "decoding") == expected["decoding"] == "assisted"
    assert text(result, "language") == "en"
    assert result.as_numpy("duration").tolist() == pytest.approx([3.0])


def test_samples_transcribe_as_the_same_audio_in_a_file(server, client, audio, to_file):
    module, triton = client
    samples = audio(2.5, seed=62)
    result = triton.infer(
        "asr", [samples_input(module, samples)], parameters={"sample_rate": 16000, "decoding": "plain"}
    )
    assert text(result) == rest(server, to_file(samples, subtype="FLOAT"), decoding="plain")["text"]


def test_samples_at_another_rate_are_resampled_as_files_are(server, grpc_client, audio, to_file):
    samples = audio(2, seed=63, rate=8000)
    result = grpc_client.infer(
        "asr", [samples_input(triton_grpc, samples)], parameters={"sample_rate": 8000, "language": "en"}
    )
    assert result.as_numpy("duration").tolist() == pytest.approx([2.0])
    assert text(result) == rest(server, to_file(samples, rate=8000, subtype="FLOAT"), language="en")["text"]


def test_translation_with_segments_as_rest_verbose_json(server, http_client, audio_file):
    content = audio_file(4, seed=64)
    parameters = {"task": "translate", "timestamps": True, "temperature": 0, "prompt": "the weather"}
    result = http_client.infer("asr", [file_input(triton_http, content)], parameters=parameters)
    expected = rest(
        server,
        content,
        route="translations",
        response_format="verbose_json",
        prompt="the weather",
        temperature="0",
    )
    assert text(result) == expected["text"]
    segments = json.loads(text(result, "segments"))
    assert segments == expected["segments"] and segments
    assert all(0 <= segment["start"] <= segment["end"] <= 4.0 for segment in segments)
    assert result.as_numpy("words") is None


def test_word_timestamps_as_rest_verbose_json(server, grpc_client, audio_file):
    content = audio_file(3, seed=69)
    result = grpc_client.infer(
        "asr", [file_input(triton_grpc, content)], parameters={"word_timestamps": True, "language": "en"}
    )
    expected = rest(
        server,
        content,
        response_format="verbose_json",
        language="en",
        **{"timestamp_granularities[]": ["segment", "word"]},
    )
    assert json.loads(text(result, "words")) == expected["words"] and expected["words"]
    assert json.loads(text(result, "segments")) == expected["segments"]


def test_logprobs_as_rest_json(server, grpc_client, audio_file):
    content = audio_file(2, seed=65)
    result = grpc_client.infer("asr", [file_input(triton_grpc, content)], parameters={"logprobs": True})
    expected = rest(server, content, **{"include[]": "logprobs"})
    assert json.loads(text(result, "logprobs")) == expected["logprobs"]


def test_stream_infer_sends_a_delta_per_window_then_the_result(server, grpc_client, audio_file):
    content = audio_file(40, seed=66)
    answers: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        grpc_client.async_stream_infer(
            "asr", [file_input(triton_grpc, content)], request_id="long", parameters={"language": "en"}
        )
        parts = []
        while True:
            result, error = answers.get(timeout=120)
            assert error is None, error
            parts.append(result)
            if result.as_numpy("text") is not None:
                break
    finally:
        grpc_client.stop_stream()
    deltas = [text(part, "delta") for part in parts[:-1]]
    assert len(deltas) >= 2, "a delta per decoded 30 s window"
    final = text(parts[-1])
    assert "".join(deltas).strip() == final == rest(server, content, language="en")["text"]
    assert parts[-1].as_numpy("delta") is None and parts[-1].get_response().id == "long"


def test_shape_over_the_limit_is_refused_before_any_data(server):
    limit = MAX_AUDIO_SECONDS * MAX_SAMPLE_RATE
    document = {
        "inputs": [{"name": "audio_samples", "datatype": "FP32", "shape": [limit + 1], "data": [0.0]}],
        "parameters": {"sample_rate": 16000},
    }
    response = httpx.post(f"{server.rest_url}/v2/models/asr/infer", json=document, timeout=30)
    assert response.status_code == 400
    assert f"the limit is {limit}" in response.json()["error"]


def test_samples_longer_than_the_limit_at_their_rate_get_413(server):
    samples = np.zeros(MAX_AUDIO_SECONDS * 8000 + 1, dtype=np.float32)
    tensor = samples_input(triton_http, samples)
    body, header_length = triton_http.InferenceServerClient.generate_request_body(
        [tensor], parameters={"sample_rate": 8000}
    )
    response = httpx.post(
        f"{server.rest_url}/v2/models/asr/infer",
        content=body,
        timeout=30,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
    assert response.status_code == 413 and "the limit is 90 s" in response.json()["error"]


@pytest.mark.parametrize(
    ("inputs", "parameters", "problem"),
    [
        ("file", {"beam_size": 5}, "beam_size"),
        ("file", {"temperature": "hot"}, "temperature"),
        ("file", {"temperature": 3.0}, "temperature"),
        ("file", {"task": "summarise"}, "task"),
        ("file", {"decoding": "fastest"}, "decoding"),
        ("file", {"sample_rate": 16000}, "sample_rate"),
        ("samples", {}, "sample_rate"),
        ("samples", {"sample_rate": 96000}, "96000 Hz"),
        ("nan", {"sample_rate": 16000}, "NaN"),
        ("both", {"sample_rate": 16000}, "exactly one"),
        ("none", {}, "exactly one"),
        ("not audio", {}, "could not decode"),
    ],
)
def test_bad_requests_are_refused_naming_the_problem(client, audio_file, inputs, parameters, problem):
    module, triton = client
    samples = np.zeros(1600, dtype=np.float32)
    tensors = {
        "file": [file_input(module, audio_file(1, seed=67))],
        "samples": [samples_input(module, samples)],
        "nan": [samples_input(module, np.full(1600, np.nan, dtype=np.float32))],
        "both": [file_input(module, audio_file(1, seed=67)), samples_input(module, samples)],
        "none": [],
        "not audio": [file_input(module, b"RIFF-but-not-really-a-wave-file" * 10)],
    }[inputs]
    with pytest.raises(InferenceServerException, match=problem) as caught:
        triton.infer("asr", tensors, parameters=parameters)
    assert caught.value.status() in ("400", "415", "StatusCode.INVALID_ARGUMENT")


def test_server_keeps_serving_after_refusals(http_client, audio_file):
    with pytest.raises(InferenceServerException):
        http_client.infer("asr", [file_input(triton_http, b"junk")])
    assert text(http_client.infer("asr", [file_input(triton_http, audio_file(1, seed=68))]))


REAL = Path(__file__).resolve().parents[2] / "models" / "real"


@pytest.fixture(scope="module")
def real_server():
    settings = ASRSettings(
        model=str(REAL / "whisper-base"),
        assistant_model=str(REAL / "whisper-base-assistant-2l"),
        threads=1,
        log_level="warning",
    )
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.mark.realmodels
@pytest.mark.skipif(
    not (REAL / "whisper-base" / "model.safetensors").is_file()
    or not (REAL / "speech" / "en00.wav").is_file(),
    reason="real whisper-base and speech are absent: run `make real-asr`",
)
def test_real_speech_transcribes_as_rest_does(real_server):
    content = (REAL / "speech" / "en00.wav").read_bytes()
    samples, rate = sf.read(io.BytesIO(content), dtype="float32")
    expected = rest(real_server, content, language="en")["text"]
    assert "quick brown fox" in expected.lower()
    over_http = triton_http.InferenceServerClient(
        real_server.rest_url.removeprefix("http://"), network_timeout=120
    )
    result = over_http.infer("asr", [file_input(triton_http, content)], parameters={"language": "en"})
    assert text(result) == expected
    over_grpc = triton_grpc.InferenceServerClient(real_server.grpc_target)
    result = over_grpc.infer(
        "asr", [samples_input(triton_grpc, samples)], parameters={"language": "en", "sample_rate": rate}
    )
    assert text(result) == expected


def test_voice_activity_chunking_as_a_parameter(server, grpc_client, audio, to_file):
    samples = np.concatenate([audio(2, seed=70), np.zeros(32000, dtype=np.float32), audio(2, seed=71)])
    strategy = json.dumps({"type": "server_vad", "silence_duration_ms": 500})
    result = grpc_client.infer(
        "asr",
        [samples_input(triton_grpc, samples)],
        parameters={"sample_rate": 16000, "chunking_strategy": strategy, "timestamps": True},
    )
    expected = rest(
        server, to_file(samples, subtype="FLOAT"), chunking_strategy=strategy, response_format="verbose_json"
    )
    assert text(result, "decoding") == expected["decoding"]
    assert text(result) == expected["text"]
    assert json.loads(text(result, "segments")) == expected["segments"]
    # Chunks are decoded on their own: the transcript is not the one of the whole audio in 30 s windows.
    whole = rest(server, to_file(samples, subtype="FLOAT"), response_format="verbose_json")
    assert whole["segments"] != expected["segments"]
