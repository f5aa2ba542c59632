"""Attacks on the Open Inference Protocol's bounds and on JSON text encodings (issue 22: responses bounded like
requests, JSON limits on the text that is parsed, malformed requests as 4xx in the protocol's shape)."""

import gzip
import json
from collections.abc import Callable

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
from hostile_platform import Platform, http_post, wav
from tritonclient.utils import InferenceServerException

PROMPT = {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a castle"]}


def oip_outputs_700_rest(platform: Platform, cap: float) -> tuple[str, str]:
    body = {"inputs": [PROMPT], "outputs": [{"name": "images"}] * 700}
    return http_post(platform.rest_url + "/v2/models/imagegen/infer", cap, json=body)


def oip_outputs_700_grpc(platform: Platform, cap: float) -> tuple[str, str]:
    client = triton_grpc.InferenceServerClient(platform.grpc_target)
    prompt = triton_grpc.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a castle"], dtype=np.object_))
    try:
        result = client.infer(
            "imagegen", [prompt], outputs=[triton_grpc.InferRequestedOutput("images")] * 700, client_timeout=cap
        )
    except InferenceServerException as exc:
        return str(exc.status()).removeprefix("StatusCode."), (exc.message() or "")[:200]
    finally:
        client.close()
    return grpc.StatusCode.OK.name, f"{len(result.get_response().raw_output_contents)} outputs"


def utf16_hidden_numbers(platform: Platform, cap: float) -> tuple[str, str]:
    # 'Ģ' is bytes 22 01 in UTF-16-LE: a byte scanner reading UTF-8 takes it for a quote.
    body = json.dumps({"text": "Ģ", "numbers": [0] * 1_000_000, "source_lang": "en", "target_lang": "de"},
                      ensure_ascii=False).encode("utf-16-le")
    return http_post(platform.rest_url + "/v1/translate", cap, content=body, headers={"content-type": "application/json"})


def oip_gzip_floats_for_asr(platform: Platform, cap: float) -> tuple[str, str]:
    values = 6_000_000
    header = f'{{"inputs": [{{"name": "audio_samples", "datatype": "FP32", "shape": [{values}], "data": ['
    text = header.encode() + b"0.0," * (values - 1) + b'0.0]}], "parameters": {"sample_rate": 16000, "language": "xx"}}'
    return http_post(platform.rest_url + "/v2/models/asr/infer", cap, content=gzip.compress(text, 9),
                     headers={"content-encoding": "gzip"})


def oip_header_length_superscript(platform: Platform, cap: float) -> tuple[str, str]:
    return http_post(platform.rest_url + "/v2/models/imagegen/infer", cap, json={"inputs": [PROMPT]},
                     headers={"Inference-Header-Content-Length": "²".encode("latin-1")})


def oip_malformed(body: dict) -> Callable[[Platform, float], tuple[str, str]]:
    def attack(platform: Platform, cap: float) -> tuple[str, str]:
        return http_post(platform.rest_url + "/v2/models/imagegen/infer", cap, json=body)

    return attack


def asr_chunking_nested(platform: Platform, cap: float) -> tuple[str, str]:
    nested = "[" * 50_000 + "]" * 50_000
    return http_post(
        platform.rest_url + "/v1/audio/transcriptions", cap,
        files={"file": ("clip.wav", wav(16000), "audio/wav")},
        data={"model": "whisper-1", "chunking_strategy": '{"type": ' + nested + "}"},
    )


ATTACKS = [
    ("OIP imagegen outputs x700 (REST)", oip_outputs_700_rest),
    ("OIP imagegen outputs x700 (gRPC ModelInfer)", oip_outputs_700_grpc),
    ("UTF-16-LE JSON hiding 1M numbers -> /v1/translate", utf16_hidden_numbers),
    ("OIP gzip 23 KB -> 24 MB floats for asr", oip_gzip_floats_for_asr),
    ("OIP Inference-Header-Content-Length ²", oip_header_length_superscript),
    ("OIP shape [10**400]", oip_malformed(
        {"inputs": [PROMPT, {"name": "image_pixels", "datatype": "UINT8", "shape": [10**400, 1, 3], "data": []}]}
    )),
    ("OIP input parameters a list", oip_malformed({"inputs": [{**PROMPT, "parameters": ["x"]}]})),
    ("ASR chunking_strategy nested 50,000 deep", asr_chunking_nested),
]
