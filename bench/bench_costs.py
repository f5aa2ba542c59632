"""Cost units vs measured time: does each service's work budget price what its requests really cost?

    python bench/bench_costs.py [--repo PATH] [--only SERVICE]

Runs each service in-process on the tiny models (env/tiny.env, one thread) and sends, one at a time, the
cheapest-to-send, most expensive requests within the default limits (translation: long or escaped sources, many
beams; ASR: long audio, word timestamps; TTS: long text; imagegen: size x steps x n). Prints a markdown table:
the request, the cost the service's budget charged (captured at the batcher), wall seconds, and seconds per cost
unit. A request refused by the budget shows its cost and the answer instead of a time. Pointing --repo at a git
worktree of an older commit measures that commit's cost functions.
"""

import argparse
import io
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def tiny_env(repo: Path) -> None:
    for line in (repo / "env" / "tiny.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = shlex.split(line)[0].partition("=")
            os.environ[key] = value


def wav(seconds: float) -> bytes:
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def translate(text, n, **options):
    return "/v1/translate", {"json": {"text": [text] * n, "source_lang": "en", "target_lang": "de", **options}}


PROSE = "The committee discussed the long report about trains, weather and the budget for next year. " * 21
ESCAPED = "||||| " * 34  # 1,021 source tokens in 204 characters ('|' is escaped to '&#124;')
CASES = {
    "translation": [
        ("32 short texts x 8 beams x 200 tokens", translate("Hello world, how are you?", 32, num_beams=8, max_new_tokens=200)),
        ("32 prose texts (2,000 chars) x 8 beams x 200 tokens", translate(PROSE[:2000], 32, num_beams=8, max_new_tokens=200)),
        ("32 prose texts (2,000 chars), greedy, 200 tokens", translate(PROSE[:2000], 32, num_beams=1, max_new_tokens=200)),
        ("32 escaped texts (1,021 tokens), greedy, 1 token", translate(ESCAPED, 32, num_beams=1, max_new_tokens=1)),
        ("32 escaped texts (1,021 tokens), 8 beams, 50 tokens", translate(ESCAPED, 32, num_beams=8, max_new_tokens=50)),
        ("6 escaped texts (1,021 tokens), 8 beams, 200 tokens", translate(ESCAPED, 6, num_beams=8, max_new_tokens=200)),
    ],
    "asr": [
        ("60 s audio, plain", ("/v1/audio/transcriptions", {"files": {"file": ("a.wav", wav(60), "audio/wav")},
                                                            "data": {"language": "en", "decoding": "plain"}})),
        ("60 s audio, word timestamps", ("/v1/audio/transcriptions", {"files": {"file": ("a.wav", wav(60), "audio/wav")},
            "data": {"language": "en", "response_format": "verbose_json", "timestamp_granularities[]": "word"}})),
        ("300 s audio, assisted", ("/v1/audio/transcriptions", {"files": {"file": ("a.wav", wav(300), "audio/wav")},
                                                                "data": {"language": "en"}})),
    ],
    "tts": [
        ("200 characters", ("/v1/audio/speech", {"json": {"input": "Hello there, how are you? " * 8, "voice": "alloy",
                                                          "response_format": "wav", "stream": False}})),
        ("4,000 characters, one sentence each 40", ("/v1/audio/speech", {"json": {
            "input": "This is one of many sentences to read. " * 100, "voice": "alloy", "response_format": "wav",
            "stream": False}})),
        ("4,000 characters, no sentence breaks", ("/v1/audio/speech", {"json": {
            "input": "word " * 800, "voice": "alloy", "response_format": "wav", "stream": False}})),
    ],
    "imagegen": [
        ("1 x 256x256 x 10 steps", ("/v1/images/generations", {"json": {"prompt": "a cat", "size": "256x256", "steps": 10}})),
        ("4 x 512x512 x 20 steps", ("/v1/images/generations", {"json": {"prompt": "a cat", "size": "512x512", "n": 4, "steps": 20}})),
        ("4 x 1024x1024 x 2 steps", ("/v1/images/generations", {"json": {"prompt": "a cat", "size": "1024x1024", "n": 4, "steps": 2}})),
        ("1 x 1024x1024 x 50 steps", ("/v1/images/generations", {"json": {"prompt": "a cat", "size": "1024x1024", "steps": 50}})),
    ],
}

SETTINGS = {"translation": "TranslationSettings", "asr": "ASRSettings", "tts": "TTSSettings",
            "imagegen": "ImageGenSettings"}


def measure(service: str) -> list[tuple[str, str, float, float | None, str]]:
    import importlib

    import httpx

    from services.kit.testing import ServerThread

    module = importlib.import_module(f"services.{service}.service")
    settings_class = getattr(importlib.import_module(f"services.{service}.settings"), SETTINGS[service])
    settings = settings_class(threads=1, log_level="warning")
    rows = []
    with ServerThread(lambda: [module.create_service(settings)], settings) as server:
        charged: list[float] = []
        for batcher in server.services[0].batchers:
            for method in ("submit", "stream"):
                original = getattr(batcher, method)

                def recording(*args, original=original, **kwargs):
                    charged.append(kwargs.get("cost", 1.0))
                    return original(*args, **kwargs)

                setattr(batcher, method, recording)
        for name, (path, request) in CASES[service]:
            charged.clear()
            started = time.perf_counter()
            response = httpx.post(server.rest_url + path, timeout=600, **request)
            seconds = time.perf_counter() - started
            cost = charged[0] if charged else float("nan")
            if response.status_code != 200:
                error = response.json().get("error", {})
                message = error.get("message", "") if isinstance(error, dict) else str(error)
                rows.append((service, name, cost, None, f"{response.status_code}: {message[:70]}"))
            else:
                rows.append((service, name, cost, seconds, "200"))
            print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--only", choices=list(CASES), action="append")
    args = parser.parse_args()
    os.chdir(args.repo)
    sys.path.insert(0, str(args.repo))
    tiny_env(args.repo)
    rows = [row for service in args.only or CASES for row in measure(service)]
    print("| service | request | cost units | seconds | ms per unit | answer |")
    print("|---|---|---:|---:|---:|---|")
    for service, name, cost, seconds, answer in rows:
        per_unit = f"{1000 * seconds / cost:.3f}" if seconds is not None and cost else "-"
        shown = f"{seconds:.2f}" if seconds is not None else "-"
        print(f"| {service} | {name} | {cost:,.0f} | {shown} | {per_unit} | {answer} |")


if __name__ == "__main__":
    main()
