"""NVIDIA's tritonclient (HTTP and gRPC, the calls Triton's users and tools make) against every model of the
platform on the tiny models, in one process: stream loops that wait for Triton's `triton_final_response` flag end
for every model, with or without `enable_empty_final_response`, error responses included; the model
configuration and statistics extensions answer for every model over both transports, and the statistics follow
what was served."""

import io
import threading
from collections import defaultdict

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from services.asr.service import create_service as create_asr
from services.imagegen.service import create_service as create_imagegen
from services.imagegen.settings import ImageGenSettings
from services.kit.config import PlatformSettings
from services.kit.testing import ServerThread
from services.translation.service import create_service as create_translation
from services.translation.settings import TranslationSettings
from services.tts.service import create_service as create_tts
from services.vit.server import create_service as create_vit
from services.vit.settings import ViTSettings

# A generous bound on waiting for a stream's answers: the stream tests end on what arrives, never on time.
WAIT_S = 120
FINAL = "triton_final_response"
# A request sent after the one under test on the same stream: the server serves a stream's requests in turn, so
# once its answer arrives the request before it has sent everything it will send.
SENTINEL_ID = "sentinel"
# Models that answer in parts over ModelStreamInfer (Triton's decoupled models), and those that answer once.
STREAMED = ("asr", "tts", "imagegen")
UNSTREAMED = ("translation", "tts-conversion", "hf-vit")
MODELS = (*STREAMED, *UNSTREAMED)
TTS_TEXT = "Hello world. Second sentence here."


def wav_file(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return buffer.getvalue()


def png_file() -> bytes:
    pixels = np.random.default_rng(7).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# Per model: its one-element BYTES inputs and its request parameters, a small valid request.
REQUESTS = {
    "translation": ({"text": b"Hello world."}, {"source_lang": "en", "target_lang": "de"}),
    "asr": ({"audio": wav_file(1.0)}, {}),
    "tts": ({"text": TTS_TEXT.encode()}, {"response_format": "pcm"}),
    "tts-conversion": ({"audio": wav_file(0.5)}, {}),
    "imagegen": ({"prompt": b"a cat"}, {"steps": 2, "seed": 1}),
    "hf-vit": ({"image": png_file()}, {}),
}


@pytest.fixture(scope="module")
def platform(models_dir, make_tts_settings, make_asr_settings):
    translation = TranslationSettings(
        models={"en-de": str(models_dir / "translation" / "wmt19-en-de")}, default_max_new_tokens=8,
        log_level="warning",
    )
    imagegen = ImageGenSettings(
        model=str(models_dir / "imagegen" / "stable-diffusion"), safety_checker=False, threads=1, max_wait_ms=0,
        default_steps=2, log_level="warning",
    )
    # The SavedModel `make models` exported; the server exports one from the checkpoint where it is missing.
    vit = ViTSettings(
        model_base=models_dir / "vit-serving", checkpoint=str(models_dir / "vit" / "hf-vit"), threads=1,
        log_level="warning",
    )
    factories = [
        (create_translation, translation), (create_asr, make_asr_settings()), (create_tts, make_tts_settings()),
        (create_imagegen, imagegen), (create_vit, vit),
    ]
    settings = PlatformSettings(
        log_level="warning", shutdown_grace_s=2.0, max_body_bytes=max(s.max_body_bytes for _, s in factories)
    )
    with ServerThread(lambda: [create(s) for create, s in factories], settings) as running:
        yield running


@pytest.fixture(scope="module")
def http_client(platform):
    return triton_http.InferenceServerClient(platform.rest_url.removeprefix("http://"), network_timeout=WAIT_S)


@pytest.fixture(scope="module")
def grpc_client(platform):
    return triton_grpc.InferenceServerClient(platform.grpc_target)


@pytest.fixture(params=["http", "grpc"])
def client(request, http_client, grpc_client):
    return (triton_http, http_client) if request.param == "http" else (triton_grpc, grpc_client)


def inputs_for(module, model: str) -> list:
    tensors = []
    for name, value in REQUESTS[model][0].items():
        tensor = module.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value], dtype=np.object_))
        tensors.append(tensor)
    return tensors


def is_final(result) -> bool | None:
    """The response's final flag; None where it carries none (Triton sets it on every stream response)."""
    parameters = result.get_response().parameters
    return parameters[FINAL].bool_param if FINAL in parameters else None


class StreamAnswers:
    """What a tritonclient stream's callback received, by request id, and a wait for a request's final flag."""

    def __init__(self) -> None:
        self.results: dict[str, list] = defaultdict(list)
        self.errors: list[InferenceServerException] = []
        self.changed = threading.Condition()

    def __call__(self, result, error) -> None:
        with self.changed:
            if error is not None:
                self.errors.append(error)
            else:
                self.results[result.get_response().id].append(result)
            self.changed.notify_all()

    def wait_for_final(self, request_id: str) -> None:
        """Until the request's final response, an error, or the sentinel's answer (after which no flag can come)."""

        def ended() -> bool:
            got = self.results[request_id]
            return bool((got and is_final(got[-1])) or self.errors or self.results[SENTINEL_ID])

        with self.changed:
            assert self.changed.wait_for(ended, timeout=WAIT_S), f"no answer to {request_id} in {WAIT_S} s"


def streamed(client, model: str, request_id: str, **options) -> StreamAnswers:
    """`model`'s answers to one request over ModelStreamInfer, collected the way a client that loops until the
    final flag collects them, a sentinel request behind it."""
    answers = StreamAnswers()
    client.start_stream(callback=answers)
    try:
        client.async_stream_infer(
            model, inputs_for(triton_grpc, model), request_id=request_id, parameters=REQUESTS[model][1], **options
        )
        client.async_stream_infer(
            "translation", inputs_for(triton_grpc, "translation"), request_id=SENTINEL_ID,
            parameters=REQUESTS["translation"][1],
        )
        answers.wait_for_final(request_id)
    finally:
        client.stop_stream()
    assert answers.errors == []
    return answers


@pytest.mark.parametrize("model", MODELS)
def test_every_models_stream_loop_ends_on_the_final_flag(grpc_client, model):
    answers = streamed(grpc_client, model, "sid-7")
    results = answers.results["sid-7"]
    assert [is_final(result) for result in results] == [False] * (len(results) - 1) + [True]
    # tts: a part per sentence; asr: the window's delta, then the transcript; imagegen: a part per step, then the
    # images.
    assert (len(results) == 1) if model in UNSTREAMED else (len(results) >= 2)
    assert all(result.get_response().outputs for result in results)  # the flag rides on the last part
    assert [is_final(result) for result in answers.results[SENTINEL_ID]] == [True]


def test_empty_final_response_follows_a_streaming_models_parts(grpc_client):
    answers = streamed(grpc_client, "tts", "sid-8", enable_empty_final_response=True)
    results = answers.results["sid-8"]
    assert [is_final(result) for result in results] == [False, False, True]
    assert [len(result.get_response().outputs) > 0 for result in results] == [True, True, False]
    empty = results[-1].get_response()
    assert (empty.model_name, empty.model_version, empty.id) == ("tts", "1", "sid-8")


def test_an_unstreamed_model_answers_once_and_final_even_when_an_empty_final_is_asked(grpc_client):
    # Triton sends empty final responses for decoupled models only.
    answers = streamed(grpc_client, "translation", "sid-9", enable_empty_final_response=True)
    results = answers.results["sid-9"]
    assert [is_final(result) for result in results] == [True]
    assert results[0].as_numpy("translations").size == 1


def test_a_stream_error_response_is_final_and_the_stream_goes_on(platform):
    """tritonclient hands an error response's message to the callback, not its parameters: read the wire with
    tritonclient's own messages."""
    inputs, _ = REQUESTS["tts"]
    refused = service_pb2.ModelInferRequest(model_name="tts", id="bad", parameters={"colour": {"string_param": "red"}})
    refused.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(inputs["text"])
    unknown = service_pb2.ModelInferRequest(model_name="nope", id="lost")
    with grpc.insecure_channel(platform.grpc_target) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        texts, _ = REQUESTS["translation"]
        good = service_pb2.ModelInferRequest(
            model_name="translation", id="good",
            parameters={"source_lang": {"string_param": "en"}, "target_lang": {"string_param": "de"}},
        )
        good.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(texts["text"])
        responses = list(stream(iter([refused, unknown, good]), timeout=WAIT_S))
    assert [(r.infer_response.id, bool(r.error_message)) for r in responses] == [
        ("bad", True), ("lost", True), ("good", False)
    ]
    assert "colour" in responses[0].error_message and "nope" in responses[1].error_message
    assert all(r.infer_response.parameters[FINAL].bool_param for r in responses)
    assert responses[0].infer_response.model_name == "tts"


def test_server_metadata_declares_the_extensions(http_client, grpc_client):
    for metadata in (http_client.get_server_metadata(), grpc_client.get_server_metadata(as_json=True)):
        assert {"model_configuration", "statistics"} <= set(metadata["extensions"])


def config_of(module, client, model: str) -> dict:
    if module is triton_http:
        return client.get_model_config(model)
    config = client.get_model_config(model, as_json=True)["config"]
    # Protobuf's JSON writes int64 as strings and leaves out zeros and empty fields.
    for tensor in config.get("input", []) + config.get("output", []):
        tensor["dims"] = [int(dim) for dim in tensor.get("dims", [])]
    return config


@pytest.mark.parametrize("model", MODELS)
def test_model_config_describes_every_model(platform, client, model):
    module, triton = client
    config = config_of(module, triton, model)
    assert config["name"] == model
    assert config.get("max_batch_size", 0) == 0  # no batch dimension of Triton's kind: dims are whole shapes
    assert config.get("model_transaction_policy", {}).get("decoupled", False) == (model in STREAMED)
    batching = config["dynamic_batching"]
    assert int(batching.get("max_queue_delay_microseconds", 0)) >= 0  # protobuf's JSON leaves out zeros
    assert int(batching["default_queue_policy"]["max_queue_size"]) > 0
    assert int(config["parameters"]["max_batch_requests"]["string_value"]) >= 1
    # The tensors of the model's metadata, with Triton's configuration names for their types.
    metadata = httpx.get(f"{platform.rest_url}/v2/models/{model}").json()
    for key, tensors in (("input", metadata["inputs"]), ("output", metadata["outputs"])):
        expected = {
            tensor["name"]: ("TYPE_STRING" if tensor["datatype"] == "BYTES" else f"TYPE_{tensor['datatype']}",
                             tensor["shape"])
            for tensor in tensors
        }
        assert {tensor["name"]: (tensor["data_type"], tensor["dims"]) for tensor in config[key]} == expected


def test_model_config_and_statistics_of_an_unknown_model_are_not_found(platform, grpc_client):
    for path in ("/v2/models/nope/config", "/v2/models/nope/stats", "/v2/models/tts/versions/9/config"):
        response = httpx.get(platform.rest_url + path)
        assert response.status_code == 404 and isinstance(response.json()["error"], str), path
    for call in (grpc_client.get_model_config, grpc_client.get_inference_statistics):
        with pytest.raises(InferenceServerException) as raised:
            call("nope")
        assert raised.value.status() == str(grpc.StatusCode.NOT_FOUND)


def statistics(module, client, model: str) -> dict:
    if module is triton_http:
        (stats,) = client.get_inference_statistics(model)["model_stats"]
        return stats
    (stats,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return stats


def count(stats: dict, *path: str) -> int:
    """A statistic of protobuf's JSON form (int64 as strings, zeros left out) or Triton's REST form."""
    value = stats
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else value
    return int(value or 0)


@pytest.mark.parametrize("model", MODELS)
def test_statistics_grow_after_an_inference(client, model):
    module, triton = client
    before = statistics(module, triton, model)
    triton.infer(model, inputs_for(module, model), parameters=REQUESTS[model][1])
    after = statistics(module, triton, model)
    assert (after["name"], after["version"]) == (model, "1")
    assert count(after, "inference_count") == count(before, "inference_count") + 1
    assert count(after, "execution_count") >= count(before, "execution_count") + 1
    assert count(after, "last_inference") >= count(before, "last_inference") and count(after, "last_inference") > 0
    for stage in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert count(after, "inference_stats", stage, "count") == count(before, "inference_stats", stage, "count") + 1
    assert count(after, "inference_stats", "success", "ns") > count(before, "inference_stats", "success", "ns")
    assert count(after, "inference_stats", "compute_infer", "ns") > count(before, "inference_stats", "compute_infer", "ns")
    assert count(after, "inference_stats", "fail", "count") == count(before, "inference_stats", "fail", "count")


def test_statistics_count_refused_requests_as_failures(client):
    module, triton = client
    before = statistics(module, triton, "translation")
    with pytest.raises(InferenceServerException, match="target_lang"):
        triton.infer("translation", inputs_for(module, "translation"), parameters={"source_lang": "en"})
    after = statistics(module, triton, "translation")
    assert count(after, "inference_stats", "fail", "count") == count(before, "inference_stats", "fail", "count") + 1
    assert count(after, "inference_count") == count(before, "inference_count")


def test_statistics_list_every_model_and_version(http_client, grpc_client):
    over_http = http_client.get_inference_statistics()["model_stats"]
    over_grpc = grpc_client.get_inference_statistics(as_json=True)["model_stats"]
    for listed in (over_http, over_grpc):
        assert sorted((stats["name"], stats["version"]) for stats in listed) == sorted((m, "1") for m in MODELS)
    assert http_client.get_inference_statistics("tts", "1")["model_stats"][0]["name"] == "tts"
