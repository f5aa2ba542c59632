"""Continuous (iteration-level) batching vs whole-request batching, mixed output lengths, through the real server.

    python bench/bench_continuous.py [--services translation tts asr] [--requests 64] [--rounds 2] [--size tiny]

Per service, two servers run in this process with the same weights: one with continuous batching (the
default) and one with it switched off (`<SERVICE>_CONTINUOUS_BATCHING=false`: whole-request batches, as
before). Both get the same requests at concurrency 1 and 16, in rounds that alternate which goes first, so
load on the machine hits both alike. Output lengths are mixed:
- translation: greedy, max_new_tokens drawn from 5..100 (a random-weight FSMT with d_model 256, 3+3 layers,
  where the model's time dominates as with real checkpoints; random weights decode to max_new_tokens);
- tts: texts of 1 to 12 words (random weights decode every sentence to the maximum length ratio, so
  spectrogram frames follow the text's length); `--size small` or `base` builds bench_tts's random-weight
  SpeechT5 and HiFi-GAN of that size instead of the tiny test models;
- asr: real whisper-base (models/real, `make real-asr`) on its English evaluation clips (mixed lengths),
  plain path (no assistant loaded).
The table: throughput and p50/p95 latency per mode, and continuous/whole-request ratios (p95 target <= 0.6x at
concurrency 16 with throughput >= 1x; concurrency 1 no slower).
"""

import argparse
import asyncio
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import torch
from loadgen import percentile

from services.kit.testing import ServerThread

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
WORDS = "the quick brown fox jumps over a lazy dog while we serve models on kubernetes every day".split()


async def load(send, bodies: list, concurrency: int) -> tuple[float, list[float]]:
    """Send every body with `concurrency` clients in parallel; (wall seconds, per-request latencies)."""
    latencies: list[float] = []
    queue = list(range(len(bodies)))

    async def user(client: httpx.AsyncClient):
        while queue:
            body = bodies[queue.pop(0)]
            started = time.perf_counter()
            await send(client, body)
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(user(client) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


# -- per service: servers (continuous on/off) and mixed-length requests -------------------------------------------


def translation(work: Path, requests: int, rng: random.Random):
    from bench_translation import medium_model

    from services.translation.service import create_service
    from services.translation.settings import TranslationSettings

    model_dir = medium_model(work)
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Where is the nearest train station?",
        "Please send me the report by Friday.",
        "We are serving models on Kubernetes.",
    ]

    def settings(continuous: bool):
        return TranslationSettings(
            models={"en-de": str(model_dir)},
            log_level="warning",
            max_queue=1024,
            max_batch_size=16,
            continuous_batching=continuous,
        )

    bodies = [
        {
            "text": rng.choice(sentences),
            "source_lang": "en",
            "target_lang": "de",
            "num_beams": 1,
            "max_new_tokens": rng.randint(5, 100),
        }
        for _ in range(requests)
    ]

    def send(base_url):
        async def post(client, body):
            response = await client.post(base_url + "/v1/translate", json=body)
            response.raise_for_status()

        return post

    return create_service, settings, bodies, send


def tts(work: Path, requests: int, rng: random.Random, size: str = "tiny"):
    from services.tts.service import create_service
    from services.tts.settings import TTSSettings

    models = {}
    if size != "tiny":
        from bench_tts import random_models

        tts_dir, vocoder_dir = random_models(work, size)
        models = {"model": str(tts_dir), "vocoder": str(vocoder_dir)}

    def settings(continuous: bool):
        return TTSSettings(
            log_level="warning",
            max_queue=1024,
            max_batch_size=16,
            continuous_batching=continuous,
            request_timeout_s=600,
            **models,
        )

    bodies = [
        {
            "model": "tts-1",
            "voice": "alloy",
            "response_format": "pcm",
            "input": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + ".",
        }
        for _ in range(requests)
    ]

    def send(base_url):
        async def post(client, body):
            response = await client.post(base_url + "/v1/audio/speech", json=body)
            response.raise_for_status()

        return post

    return create_service, settings, bodies, send


def asr(work: Path, requests: int, rng: random.Random):
    from services.asr.service import create_service
    from services.asr.settings import ASRSettings

    real = REPO / "models" / "real"
    speech = sorted((real / "speech").glob("en*.wav"))
    if not (real / "whisper-base").is_dir() or not speech:
        raise SystemExit("asr needs models/real (make real-asr): whisper-base and its evaluation speech")
    clips = [path.read_bytes() for path in speech]

    def settings(continuous: bool):
        return ASRSettings(
            model=str(real / "whisper-base"),
            assistant_model="",
            log_level="warning",
            max_queue=1024,
            max_batch_size=16,
            continuous_batching=continuous,
        )

    bodies = [rng.choice(clips) for _ in range(requests)]

    def send(base_url):
        async def post(client, clip):
            response = await client.post(
                base_url + "/v1/audio/transcriptions",
                files={"file": ("clip.wav", clip, "audio/wav")},
                data={"model": "whisper-1", "language": "en"},
            )
            response.raise_for_status()

        return post

    return create_service, settings, bodies, send


SERVICES = {"translation": translation, "tts": tts, "asr": asr}


def run_service(name: str, args: argparse.Namespace, work: Path) -> list[tuple]:
    rng = random.Random(0)
    sized = {"size": args.size} if name == "tts" else {}
    create_service, settings_for, bodies, send = SERVICES[name](work, args.requests, rng, **sized)
    rows = []
    with ExitStack() as stack:
        servers = {}
        for continuous in (True, False):
            settings = settings_for(continuous)
            servers[continuous] = stack.enter_context(
                ServerThread(lambda s=settings: [create_service(s)], settings)
            )
        for concurrency in (1, 16):
            count = max(8, args.requests // 4) if concurrency == 1 else args.requests
            measured = {True: ([], 0.0), False: ([], 0.0)}
            for round_ in range(args.rounds):
                for continuous in (True, False) if round_ % 2 == 0 else (False, True):
                    post = send(servers[continuous].rest_url)
                    asyncio.run(load(post, bodies[:2], 1))  # warm the connection and the path
                    elapsed, latencies = asyncio.run(load(post, bodies[:count], concurrency))
                    previous, seconds = measured[continuous]
                    measured[continuous] = (previous + latencies, seconds + elapsed)
            stats = {}
            for continuous, (latencies, seconds) in measured.items():
                stats[continuous] = (
                    len(latencies) / seconds,
                    percentile(latencies, 50),
                    percentile(latencies, 95),
                )
            for continuous in (False, True):
                throughput, p50, p95 = stats[continuous]
                base = stats[False]
                rows.append(
                    (
                        name,
                        concurrency,
                        "continuous" if continuous else "whole-request",
                        throughput,
                        p50 * 1000,
                        p95 * 1000,
                        throughput / base[0],
                        p95 / base[2],
                    )
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--services", nargs="+", choices=list(SERVICES), default=["translation", "tts", "asr"]
    )
    parser.add_argument("--requests", type=int, default=64, help="requests per round at concurrency 16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--size",
        choices=["tiny", "small", "base"],
        default="tiny",
        help="tts models: the tiny test ones or bench_tts's random-weight ones of that size",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.services:
            rows += run_service(name, args, Path(work))
    print(
        f"\n{'service':<12} {'conc':>4} {'mode':<14} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'thr x':>6} {'p95 x':>6}"
    )
    for name, concurrency, mode, throughput, p50, p95, thr_ratio, p95_ratio in rows:
        print(
            f"{name:<12} {concurrency:>4} {mode:<14} {throughput:>7.2f} {p50:>8.1f} {p95:>8.1f} "
            f"{thr_ratio:>6.2f} {p95_ratio:>6.2f}"
        )


if __name__ == "__main__":
    main()
