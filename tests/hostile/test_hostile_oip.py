"""The Open Inference Protocol against a determined client: responses bounded before compute, requested outputs
unique, every malformed request a 400 in the protocol's own shape, and JSON tensors bounded while a compressed
body inflates."""

import gzip
import json

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from services.asr.service import create_service as create_asr
from services.imagegen.service import create_service as create_imagegen
from services.imagegen.settings import ImageGenSettings
from services.kit.testing import ServerThread

IMAGEGEN_INFER = "/v2/models/imagegen/infer"
ASR_INFER = "/v2/models/asr/infer"
MAX_BODY_BYTES = 64 * 1024
PROMPT = {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a castle"]}


@pytest.fixture(scope="module")
def imagegen(models_dir):
    # The smallest bounds the settings allow: a response the size of one 512x512 image in JSON is refused.
    settings = ImageGenSettings(
        model=str(models_dir / "imagegen" / "stable-diffusion"), safety_checker=False, default_steps=2, threads=1,
        log_level="warning", max_wait_ms=0, max_response_bytes=1024 * 1024, grpc_max_message_bytes=4 * 1024 * 1024,
        max_body_bytes=MAX_BODY_BYTES,
    )
    with ServerThread(lambda: [create_imagegen(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def asr(make_asr_settings):
    settings = make_asr_settings(max_wait_ms=0, max_audio_seconds=1800)
    with ServerThread(lambda: [create_asr(settings)], settings) as running:
        yield running


def post(server, path: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.rest_url + path, content=content, timeout=120, **kwargs)


def assert_oip_error(response: httpx.Response, status: int, *words: str) -> str:
    """The protocol's error shape, {"error": "<message>"}, never the kit's nested object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for word in words:
        assert word in body["error"], body["error"]
    return body["error"]


def test_duplicate_outputs_are_refused_over_rest(imagegen):
    # 700 copies of "images" made a 525 MiB answer from a 14 KB request.
    body = {"inputs": [PROMPT], "outputs": [{"name": "images"}] * 700}
    assert_oip_error(post(imagegen, IMAGEGEN_INFER, body), 400, "output 'images' requested more than once")


def test_duplicate_outputs_are_refused_over_grpc(imagegen):
    client = triton_grpc.InferenceServerClient(imagegen.grpc_target)
    prompt = triton_grpc.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a castle"], dtype=np.object_))
    outputs = [triton_grpc.InferRequestedOutput("images")] * 700
    with pytest.raises(InferenceServerException) as refused:
        client.infer("imagegen", [prompt], outputs=outputs, client_timeout=120)
    assert refused.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert "output 'images' requested more than once" in refused.value.message()


def test_a_response_beyond_the_bound_is_refused_before_compute(imagegen):
    large = {"width": 512, "height": 512}
    body = {"inputs": [PROMPT], "parameters": large}
    message = assert_oip_error(post(imagegen, IMAGEGEN_INFER, body), 400, "max_response_bytes", "1048576")
    assert "'images'" in message  # the largest output is named
    # The bound follows what is asked for: the seeds alone of the same request are small.
    seeds_only = {**body, "outputs": [{"name": "seeds"}], "parameters": {**large, "steps": 1}}
    answer = post(imagegen, IMAGEGEN_INFER, seeds_only)
    assert answer.status_code == 200, answer.text
    assert [output["name"] for output in answer.json()["outputs"]] == ["seeds"]


def test_grpc_refuses_a_response_beyond_its_send_limit_before_compute(imagegen):
    # Four 1024x1024 images and their PNG files are ~28 MB raw: beyond this server's 4 MiB messages. Computed,
    # the request would run for minutes on the tiny model before failing at the send limit.
    client = triton_grpc.InferenceServerClient(imagegen.grpc_target)
    prompt = triton_grpc.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a castle"], dtype=np.object_))
    parameters = {"n": 4, "width": 1024, "height": 1024}
    with pytest.raises(InferenceServerException) as refused:
        client.infer("imagegen", [prompt], parameters=parameters, client_timeout=60)
    assert refused.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert str(4 * 1024 * 1024) in refused.value.message()


MALFORMED = {
    # str.isdigit() is True for '²', which int() refuses.
    "header length '²'": ({"inputs": [PROMPT]}, {"Inference-Header-Content-Length": "²".encode("latin-1")}, "Inference-Header"),
    "shape [10**400]": (
        {"inputs": [PROMPT, {"name": "image_pixels", "datatype": "UINT8", "shape": [10**400, 1, 3], "data": []}]},
        {}, "64-bit integers",
    ),
    "input parameters a list": ({"inputs": [{**PROMPT, "parameters": ["binary_data_size"]}]}, {}, "parameters"),
    "input parameters a string": ({"inputs": [{**PROMPT, "parameters": "binary"}]}, {}, "parameters"),
    "output parameters a list": (
        {"inputs": [PROMPT], "outputs": [{"name": "seeds", "parameters": [1]}]}, {}, "parameters",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_are_400_in_the_protocols_shape(imagegen, case):
    body, headers, word = MALFORMED[case]
    assert_oip_error(post(imagegen, IMAGEGEN_INFER, body, headers=headers), 400, word)


def test_the_servers_own_refusals_on_v2_answer_in_the_protocols_shape(imagegen):
    # A body over the byte limit is refused by the server before the route runs: still {"error": "..."}.
    too_large = b"x" * (MAX_BODY_BYTES + 1)
    assert_oip_error(post(imagegen, IMAGEGEN_INFER, too_large), 413, "limit")


def test_deeply_nested_parameters_are_400(asr):
    # chunking_strategy is JSON text inside a string parameter: 50,000 levels overflowed the parser's recursion.
    nested = "[" * 50_000 + "]" * 50_000
    body = {
        "inputs": [{"name": "audio_samples", "datatype": "FP32", "shape": [16000], "data": [0.0] * 16000}],
        "parameters": {"sample_rate": 16000, "chunking_strategy": "{" + f'"type": {nested}' + "}"},
    }
    assert_oip_error(post(asr, ASR_INFER, body), 400, "chunking_strategy", "nested deeper")


def test_a_gzip_body_inflating_to_millions_of_json_values_is_refused_while_it_inflates(asr):
    # ~24 MB of JSON floats in a ~25 KB body: parsed whole it cost ~300 MiB and seconds before any check ran.
    values = 6_000_000
    header = f'{{"inputs": [{{"name": "audio_samples", "datatype": "FP32", "shape": [{values}], "data": ['
    text = header.encode() + b"0.0," * (values - 1) + b'0.0]}], "parameters": {"sample_rate": 16000}}'
    compressed = gzip.compress(text, compresslevel=9)
    assert len(compressed) < 100_000 and len(text) > 20_000_000
    response = post(asr, ASR_INFER, compressed, headers={"Content-Encoding": "gzip"})
    # Refused by the element count while inflating (the first megabytes), not by a parser or a later check.
    assert_oip_error(response, 400, "more than 2002000 JSON elements")


def test_json_tensors_within_the_limits_still_work(asr):
    body = {
        "inputs": [{"name": "audio_samples", "datatype": "FP32", "shape": [16000], "data": [0.0] * 16000}],
        "parameters": {"sample_rate": 16000, "language": "en"},
        "outputs": [{"name": "text"}, {"name": "duration"}],
    }
    answer = post(asr, ASR_INFER, gzip.compress(json.dumps(body).encode()), headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 200, answer.text
    assert [output["name"] for output in answer.json()["outputs"]] == ["text", "duration"]
