"""Speech over the Open Inference Protocol, driven by Triton's own clients (HTTP and gRPC): models "tts" and
"tts-conversion" answer what the REST routes answer for the same request."""

import base64
import io

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

TEXT = "Hello world. How are you?"


@pytest.fixture(scope="module", params=[triton_http, triton_grpc], ids=["http", "grpc"])
def client(request, tts_server):
    module = request.param
    target = tts_server.rest_url.removeprefix("http://") if module is triton_http else tts_server.grpc_target
    return module, module.InferenceServerClient(target)


def bytes_input(module, name: str, value: bytes):
    tensor = module.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value], dtype=np.object_))
    return tensor


def embedding_input(module, vector: np.ndarray):
    tensor = module.InferInput("speaker_embedding", [vector.size], "FP32")
    tensor.set_data_from_numpy(vector.astype(np.float32))
    return tensor


def response_parameters(module, result) -> dict:
    if module is triton_http:
        return result.get_response().get("parameters", {})
    return {key: value.string_param for key, value in result.get_response().parameters.items()}


def rest_speech(server, **body) -> bytes:
    response = httpx.post(f"{server.rest_url}/v1/audio/speech", json={"input": TEXT, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


def audio_file(seconds: float, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return buffer.getvalue()


def test_health_and_metadata_tell_a_client_what_to_send(client):
    module, triton = client
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("tts") and triton.is_model_ready("tts-conversion")
    speech = triton.get_model_metadata("tts", **({} if module is triton_http else {"as_json": True}))
    conversion = triton.get_model_metadata(
        "tts-conversion", **({} if module is triton_http else {"as_json": True})
    )
    one = [1] if module is triton_http else ["1"]
    many = [-1] if module is triton_http else ["-1"]
    assert speech["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": one},
        {"name": "speaker_embedding", "datatype": "FP32", "shape": many},
    ]
    audio = {"name": "audio", "datatype": "BYTES", "shape": one}
    if module is triton_http:  # JSON's form of the file is base64 text (gRPC metadata has no tensor parameters)
        audio["parameters"] = {"content_type": "base64"}
    assert conversion["inputs"][0] == audio
    assert [output["name"] for output in speech["outputs"]] == [
        "audio",
        "sample_rate",
        "audio_file",
        "sentence_index",
        "sentence",
    ]
    assert {"name": "audio", "datatype": "FP32", "shape": many} in conversion["outputs"]


@pytest.mark.parametrize("fmt", ["wav", "pcm"])
def test_speech_equals_the_rest_answer(client, tts_server, runner, fmt):
    module, triton = client
    result = triton.infer(
        "tts",
        [bytes_input(module, "text", TEXT.encode())],
        parameters={"voice": "ash", "seed": 7, "response_format": fmt, "speed": 1.25},
    )
    rest = rest_speech(tts_server, voice="ash", seed=7, response_format=fmt, speed=1.25, stream=False)
    assert result.as_numpy("audio_file").tolist() == [rest]
    samples = result.as_numpy("audio")
    assert samples.dtype == np.float32 and result.as_numpy("sample_rate").tolist() == [16000]
    if fmt == "wav":
        decoded, rate = sf.read(io.BytesIO(rest), dtype="float32")
        assert rate == 16000 and decoded.size == samples.size
        assert np.abs(decoded - samples).max() <= 2 / 32768  # one 16-bit step
    # "ash" is an OpenAI name: the response says which installed voice it selected, as REST's header does.
    assert response_parameters(module, result)["voice"] == runner.voices.resolve("ash")


def test_without_response_format_only_samples_come_back(client, tts_server):
    module, triton = client
    result = triton.infer("tts", [bytes_input(module, "text", b"Plain samples.")], parameters={"seed": 2})
    assert result.as_numpy("audio_file") is None
    wav = rest_speech(tts_server, input="Plain samples.", seed=2, response_format="wav", stream=False)
    decoded, _ = sf.read(io.BytesIO(wav), dtype="float32")
    assert np.abs(decoded - result.as_numpy("audio")).max() <= 2 / 32768


def test_own_speaker_embedding_speaks_like_the_named_voice(client, models_dir):
    module, triton = client
    vector = np.load(models_dir / "tts" / "voices" / "shimmer.npy")
    text = bytes_input(module, "text", b"My own voice.")
    named = triton.infer("tts", [text], parameters={"voice": "shimmer", "seed": 4})
    own = triton.infer(
        "tts", [text, embedding_input(module, vector)], parameters={"voice": "alloy", "seed": 4}
    )
    assert np.array_equal(own.as_numpy("audio"), named.as_numpy("audio"))
    assert response_parameters(module, own)["ignored"] == "voice"


def test_stream_sends_sentence_by_sentence_what_rest_streams(tts_server):
    triton = triton_grpc.InferenceServerClient(tts_server.grpc_target)
    text = "One. Two two. Three three three."
    answers = []
    triton.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        triton.async_stream_infer(
            "tts",
            [bytes_input(triton_grpc, "text", text.encode())],
            parameters={"voice": "nova", "seed": 9, "response_format": "pcm"},
        )
    finally:
        triton.stop_stream()
    assert [error for _, error in answers] == [None] * 3
    parts = [result for result, _ in answers]
    assert [part.as_numpy("sentence_index").tolist() for part in parts] == [[0], [1], [2]]
    assert [part.as_numpy("sentence").tolist() for part in parts] == [
        [b"One."],
        [b"Two two."],
        [b"Three three three."],
    ]
    with httpx.stream(
        "POST",
        f"{tts_server.rest_url}/v1/audio/speech",
        timeout=60,
        json={"input": text, "voice": "nova", "seed": 9, "response_format": "pcm", "stream": True},
    ) as response:
        rest_streamed = response.read()
    assert b"".join(part.as_numpy("audio_file")[0] for part in parts) == rest_streamed
    whole = triton.infer(
        "tts", [bytes_input(triton_grpc, "text", text.encode())], parameters={"voice": "nova", "seed": 9}
    )
    assert np.array_equal(np.concatenate([part.as_numpy("audio") for part in parts]), whole.as_numpy("audio"))


def test_conversion_equals_the_rest_answer(client, tts_server):
    module, triton = client
    upload = audio_file(1.0)
    result = triton.infer(
        "tts-conversion",
        [bytes_input(module, "audio", upload)],
        parameters={"voice": "echo", "seed": 5, "response_format": "flac"},
    )
    rest = httpx.post(
        f"{tts_server.rest_url}/v1/audio/conversions",
        files={"file": ("speech.wav", upload)},
        data={"voice": "echo", "seed": "5", "response_format": "flac"},
        timeout=60,
    )
    assert rest.status_code == 200, rest.text
    assert result.as_numpy("audio_file").tolist() == [rest.content]
    decoded, rate = sf.read(io.BytesIO(rest.content), dtype="float32")
    assert rate == result.as_numpy("sample_rate")[0] == 16000
    assert np.abs(decoded - result.as_numpy("audio")).max() <= 2 / 32768


def test_conversion_takes_the_file_as_base64_text_in_json(tts_server):
    """tritonclient sends BYTES as JSON strings with binary_data=False: the file's base64 text, converted as the
    same file in binary tensor data is; text that is not base64 gets 400 naming the input."""
    triton = triton_http.InferenceServerClient(tts_server.rest_url.removeprefix("http://"))
    upload = audio_file(0.5)
    parameters = {"voice": "echo", "seed": 5, "response_format": "wav"}
    binary = triton.infer("tts-conversion", [bytes_input(triton_http, "audio", upload)], parameters=parameters)
    as_text = triton_http.InferInput("audio", [1], "BYTES")
    as_text.set_data_from_numpy(np.array([base64.b64encode(upload)], dtype=np.object_), binary_data=False)
    as_json = triton.infer("tts-conversion", [as_text], parameters=parameters)
    assert as_json.as_numpy("audio_file").tolist() == binary.as_numpy("audio_file").tolist()
    assert np.array_equal(as_json.as_numpy("audio"), binary.as_numpy("audio"))
    refused = infer_json(
        tts_server, "tts-conversion", [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": ["RIFF?!"]}]
    )
    assert refused.status_code == 400 and "input 'audio'" in refused.json()["error"], refused.text


def infer_json(server, model: str, inputs: list[dict], parameters: dict | None = None) -> httpx.Response:
    document = {"inputs": inputs, "parameters": parameters or {}}
    return httpx.post(f"{server.rest_url}/v2/models/{model}/infer", json=document, timeout=60)


TEXT_TENSOR = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Hello."]}


@pytest.mark.parametrize(
    ("inputs", "parameters", "status", "named"),
    [
        ([{**TEXT_TENSOR, "shape": [2], "data": ["a", "b"]}], {}, 400, "shape [2]"),
        (
            [TEXT_TENSOR, {"name": "speaker_embedding", "datatype": "FP32", "shape": [10**9], "data": [1.0]}],
            {},
            400,
            "the limit is",
        ),
        (
            [
                TEXT_TENSOR,
                {"name": "speaker_embedding", "datatype": "FP32", "shape": [3], "data": [1.0, 2.0, 3.0]},
            ],
            {},
            400,
            "expected 512 values",
        ),
        ([TEXT_TENSOR], {"instructions": "whisper"}, 400, "instructions"),
        ([TEXT_TENSOR], {"stream_format": "sse"}, 400, "stream_format"),
        ([TEXT_TENSOR], {"voice": "bob"}, 400, "unknown voice 'bob'"),
        ([TEXT_TENSOR], {"speed": 10}, 400, "speed"),
        ([TEXT_TENSOR], {"seed": "seven"}, 400, "seed"),
        ([TEXT_TENSOR], {"response_format": "wma"}, 400, "unsupported format 'wma'"),
        ([{**TEXT_TENSOR, "data": ["x" * 5000]}], {}, 400, "exceeds the limit of 4096"),
        ([{**TEXT_TENSOR, "data": ["..."]}], {}, 400, "nothing to pronounce"),
    ],
)
def test_bad_speech_requests_get_4xx_naming_the_problem(tts_server, inputs, parameters, status, named):
    response = infer_json(tts_server, "tts", inputs, parameters)
    assert response.status_code == status
    assert named in response.json()["error"]


def test_text_that_is_not_utf8_is_refused(tts_server):
    triton = triton_grpc.InferenceServerClient(tts_server.grpc_target)
    with pytest.raises(InferenceServerException) as raised:
        triton.infer("tts", [bytes_input(triton_grpc, "text", b"\xff\xfe caf\xe9")])
    assert (
        raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT) and "UTF-8" in raised.value.message()
    )


@pytest.mark.parametrize(
    ("upload", "status", "named"),
    [
        (b"this is not audio at all", 415, "readable formats"),
        (b"", 400, "is empty"),
        (audio_file(6.0, rate=8000), 413, "the limit is 5 s"),
        (audio_file(0.001), 400, "too short to convert"),
    ],
)
def test_bad_conversion_uploads_get_4xx_naming_the_problem(client, upload, status, named):
    module, triton = client
    with pytest.raises(InferenceServerException) as raised:
        triton.infer("tts-conversion", [bytes_input(module, "audio", upload)])
    assert named in raised.value.message()
    if module is triton_http:
        assert raised.value.status() == str(status)


def test_a_failed_stream_request_does_not_end_the_stream(tts_server):
    triton = triton_grpc.InferenceServerClient(tts_server.grpc_target)
    answers = []
    triton.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        text = bytes_input(triton_grpc, "text", b"Still here.")
        triton.async_stream_infer("tts", [text], parameters={"response_format": "mp3"})
        triton.async_stream_infer("tts", [text], parameters={"response_format": "wav"})
    finally:
        triton.stop_stream()
    assert len(answers) == 2
    assert "streaming sends wav or pcm" in str(answers[0][1])
    result, error = answers[1]
    assert error is None
    assert sf.read(io.BytesIO(result.as_numpy("audio_file")[0]))[0].size == result.as_numpy("audio").size


def test_work_budgets_apply_as_on_rest(tts_server, monkeypatch):
    """The same batchers admit OIP requests: a budget lowered on them refuses speech and conversion alike."""
    speech, conversion = tts_server.services[0].batchers
    monkeypatch.setattr(speech, "max_request_cost", 5)
    monkeypatch.setattr(conversion, "max_request_cost", 0.25)
    refused = infer_json(tts_server, "tts", [{**TEXT_TENSOR, "data": ["Too long for five."]}])
    assert refused.status_code == 400 and "TTS_MAX_REQUEST_COST" in refused.json()["error"]
    rest = httpx.post(
        f"{tts_server.rest_url}/v1/audio/speech", json={"input": "Too long for five."}, timeout=60
    )
    assert rest.status_code == 400 and "TTS_MAX_REQUEST_COST" in rest.json()["error"]["message"]
    triton = triton_grpc.InferenceServerClient(tts_server.grpc_target)
    with pytest.raises(InferenceServerException, match="TTS_MAX_CONVERSION_COST"):
        triton.infer("tts-conversion", [bytes_input(triton_grpc, "audio", audio_file(0.5))])
    assert triton.infer("tts", [bytes_input(triton_grpc, "text", b"Hi.")]).as_numpy("audio").size > 0
