"""Budget and cancellation attacks: source tokens the translation budget did not price, and an image generation
abandoned by its client (its VAE decode used to run anyway, holding the model thread every service shares)."""

import socket
import time

import httpx
from hostile_platform import Platform, http_post

# FSMT's tokenizer escapes '|' into '&#124;': 834 characters make 5,005 source tokens.
FIVE_THOUSAND_TOKENS = "|" * 834


def translation_long_sources(platform: Platform, cap: float) -> tuple[str, str]:
    body = {"text": [FIVE_THOUSAND_TOKENS] * 6, "source_lang": "en", "target_lang": "de", "max_new_tokens": 1}
    return http_post(platform.rest_url + "/v1/translate", cap, json=body)


def imagegen_abandoned(platform: Platform, cap: float) -> tuple[str, str, float]:
    """Seconds a translation takes right after a big generation's client left at 3 s."""
    request = httpx.Request("POST", platform.rest_url + "/v1/images/generations",
                            json={"prompt": "a lighthouse", "n": 4, "size": "1024x1024", "steps": 50})
    head = f"POST /v1/images/generations HTTP/1.1\r\nhost: {request.url.netloc.decode()}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host") + "\r\n"
    with socket.create_connection((request.url.host, request.url.port)) as connection:
        connection.sendall(head.encode("latin-1") + request.read())
        connection.settimeout(3)
        try:
            refused = connection.recv(200).decode("latin-1").split("\r\n")[0]  # answered within 3 s: refused
        except TimeoutError:
            refused = ""
    started = time.perf_counter()
    answer, _ = http_post(platform.rest_url + "/v1/translate", cap,
                          json={"text": "Hello world.", "source_lang": "en", "target_lang": "de", "max_new_tokens": 8})
    seconds = time.perf_counter() - started
    detail = f"generation answered {refused!r}" if refused else "client left at 3 s"
    return f"{answer} (translation after {seconds:.1f} s)", detail + f"; translation took {seconds:.1f} s", seconds


ATTACKS = [
    ("translate 6 texts x 5000 source tokens, max_new_tokens 1", translation_long_sources),
    ("imagegen n=4 1024x1024 50 steps, client leaves at 3 s; then a translation (seconds)", imagegen_abandoned),
]
