"""Decoding bounded in time: a 4096x4096 grey progressive JPEG of 1000 identical AC-refinement scans (~100 KB;
every scan is a pass over all 16.7M coefficients), sent to image generation and to ViT, and six of them at once
followed by an unrelated OIP translation. Before: seconds of CPU per upload (the header's size passes every
pixel limit), and six decodes filled asyncio's default pool, so the translation waited for them."""

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from hostile_platform import Platform, http_post, summary
from PIL import Image

SIDE, SCANS, AT_ONCE = 4096, 1000, 6
TRANSLATION = {
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Hello world."]}],
    "parameters": {"source_lang": "en", "target_lang": "de"},
}


def many_scan_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (SIDE, SIDE), 128).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * (SCANS - data.count(b"\xff\xda")) + data[end:]


HOSTILE = many_scan_jpeg()


def edit(platform: Platform, cap: float) -> tuple[str, str]:
    files = {"image": ("scans.jpg", HOSTILE, "image/jpeg")}
    return http_post(platform.rest_url + "/v1/images/edits", cap, files=files, data={"prompt": "a cat", "steps": "2"})


def vit_predict(platform: Platform, cap: float) -> tuple[str, str]:
    body = {"instances": [{"b64": base64.b64encode(HOSTILE).decode()}]}
    return http_post(platform.vit_rest_url + "/v1/models/hf-vit:predict", cap, json=body)


def six_then_translation(platform: Platform, cap: float) -> tuple[str, str, float]:
    with ThreadPoolExecutor(AT_ONCE) as senders:
        edits = [senders.submit(edit, platform, cap) for _ in range(AT_ONCE)]
        time.sleep(0.5)  # the uploads are in: their decodes are what the translation meets
        started = time.perf_counter()
        try:
            status, detail = summary(
                httpx.post(platform.rest_url + "/v2/models/translation/infer", json=TRANSLATION, timeout=cap)
            )
        except httpx.TimeoutException:
            status, detail = "timeout", f"no answer within {cap:g} s"
        seconds = time.perf_counter() - started
        uploads = sorted({result.result()[0] for result in edits})
    return status, f"the {AT_ONCE} edits answered {'/'.join(uploads)}; translation: {detail[:80]}", seconds


ATTACKS = [
    (f"progressive JPEG, {SCANS} scans -> /v1/images/edits", edit),
    (f"progressive JPEG, {SCANS} scans -> ViT :predict", vit_predict),
    ("six at once, then an OIP translation (seconds)", six_then_translation),
]
