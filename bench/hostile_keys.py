"""Attacks on who may do what: a key file that loses its keys while serving, two Authorization headers, and
TF Serving's ModelService reload on the ViT server. Each starts a platform of its own (`Platform.variant`):
they need keys on, or would unload the shared platform's model. Seconds are the attack's requests only, not
the variant's start."""

import base64
import io
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from hostile_platform import Platform, http_post, summary
from PIL import Image

KEY = "sk-bench-0123456789"
# ReloadConfigRequest { config { model_config_list { } } }: an empty config, 4 bytes on the wire.
EMPTY_RELOAD = b"\x0a\x02\x0a\x00"
RELOAD_METHOD = "/tensorflow.serving.ModelService/HandleReloadConfigRequest"
# The server re-checks a key file at most this often (services/kit/auth.py FILE_CHECK_S), plus a margin.
KEY_FILE_CHECK_S = 6.0


def key_file_emptied(platform: Platform, cap: float) -> tuple[str, str, float]:
    with tempfile.TemporaryDirectory() as folder:
        key_file = Path(folder) / "api-keys"
        key_file.write_text(f"{KEY}\n")
        keyed = platform.variant(MODELSERVE_API_KEYS_FILE=str(key_file))
        keyed.start()
        try:
            before, _ = http_post(keyed.rest_url + "/v1/models", cap)
            key_file.write_text("# every key revoked\n")
            time.sleep(KEY_FILE_CHECK_S)
            started = time.perf_counter()
            answer, detail = summary(httpx.get(keyed.rest_url + "/v1/models", timeout=cap))
            seconds = time.perf_counter() - started
            with_key = httpx.get(keyed.rest_url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=cap)
            return (
                answer,
                f"{detail or 'served'} (no key: {before} before emptying; last good key: {with_key.status_code})",
                seconds,
            )
        finally:
            keyed.stop()


def two_authorization_headers(platform: Platform, cap: float) -> tuple[str, str, float]:
    keyed = platform.variant(MODELSERVE_API_KEYS=KEY)
    keyed.start()
    try:
        # A proxy in front that checks the first header would pass the second one's holder, or the other way round.
        headers = [("Authorization", "Bearer sk-checked-by-a-proxy"), ("Authorization", f"Bearer {KEY}")]
        started = time.perf_counter()
        answer, detail = http_post(keyed.rest_url + "/v1/translate", cap, headers=headers,
                                   json={"text": "hi", "source_lang": "en", "target_lang": "de", "max_new_tokens": 2})
        with grpc.insecure_channel(keyed.grpc_target) as channel:
            server_live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")  # a cheap keyed call
            try:
                server_live(b"", timeout=cap, metadata=[("authorization", f"Bearer {KEY}"), ("authorization", "Bearer x")])
                grpc_answer = "OK"
            except grpc.RpcError as error:
                grpc_answer = error.code().name
        return answer, f"{detail or 'served'}; gRPC ServerLive with two: {grpc_answer}", time.perf_counter() - started
    finally:
        keyed.stop()


def vit_predict_status(platform: Platform, cap: float) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buffer, "PNG")
    body = {"instances": [{"b64": base64.b64encode(buffer.getvalue()).decode()}]}
    status, _ = http_post(platform.vit_rest_url + "/v1/models/hf-vit:predict", cap, json=body)
    return status


def reload_empty_config(platform: Platform, cap: float) -> tuple[str, str, float]:
    own = platform.variant()  # keys off, as the issue found it; the shared platform keeps its model
    own.start()
    try:
        started = time.perf_counter()
        with grpc.insecure_channel(own.vit_grpc_target) as channel:
            try:
                channel.unary_unary(RELOAD_METHOD)(EMPTY_RELOAD, timeout=cap)
                answer, detail = "OK", "reloaded"
            except grpc.RpcError as error:
                answer, detail = error.code().name, error.details()
        predicted = vit_predict_status(own, cap)
        return f"{answer}; then :predict {predicted}", detail, time.perf_counter() - started
    finally:
        own.stop()


ATTACKS = [
    ("key file emptied while serving, request without key", key_file_emptied),
    ("two Authorization headers (keys on)", two_authorization_headers),
    ("HandleReloadConfigRequest with an empty model_config_list, then Predict", reload_empty_config),
]
