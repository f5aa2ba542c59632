"""Translation throughput and latency through the real server, batching on vs off, plus server overhead and
torch's stock linear kernels vs the kit's few-row kernels (`few_row_linears`).

    python bench/bench_translation.py [--requests 96] [--size tiny|medium]

`tiny` is the offline test model; `medium` is a random FSMT with d_model 256 and 3+3 layers
(built here, same tokenizer), where model time dominates as it does with real checkpoints.
"""

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch
from loadgen import percentile, post_load
from transformers import FSMTConfig, FSMTForConditionalGeneration

from services.kit.testing import ServerThread
from services.translation.runner import GenerationOptions, TranslationRunner
from services.translation.service import create_service
from services.translation.settings import TranslationSettings

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "translation" / "wmt19-en-de"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Machine translation has improved a lot in recent years.",
    "Where is the nearest train station?",
    "Please send me the report by Friday.",
    "It is raining again today.",
    "We are serving models on Kubernetes.",
]
MAX_NEW_TOKENS = 24
KERNELS = {False: "stock", True: "few-row"}  # few_row_linears setting -> name


def medium_model(work: Path) -> Path:
    target = work / "wmt19-en-de-medium"
    shutil.copytree(TINY, target)
    config = FSMTConfig.from_pretrained(TINY)
    config.update(dict(d_model=256, encoder_layers=3, decoder_layers=3, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
                       encoder_attention_heads=4, decoder_attention_heads=4))
    torch.manual_seed(0)
    FSMTForConditionalGeneration(config).save_pretrained(target, safe_serialization=True)
    return target


def bodies(requests: int) -> list[dict]:
    return [
        {"text": SENTENCES[i % len(SENTENCES)], "source_lang": "en", "target_lang": "de", "max_new_tokens": MAX_NEW_TOKENS}
        for i in range(requests)
    ]


def compare_kernels(model_dir: Path, rounds: int) -> list[tuple]:
    """Runner calls at concurrency 1 (one sentence per generate call: few rows per decoding step) with
    few_row_linears off and on: the same weights loaded twice in this process, called alternately sentence
    by sentence, in alternating order, so that load on the machine hits both alike; medians, as other work
    on a shared machine stalls single calls."""
    runners = {}
    for few_row in KERNELS:
        runners[few_row] = TranslationRunner(
            TranslationSettings(models={"en-de": str(model_dir)}, few_row_linears=few_row)
        )
        runners[few_row].load()
        runners[few_row].warmup()
    rows = []
    for decoding, num_beams in (("greedy", 1), ("beam search, 4 beams", 4)):
        options = GenerationOptions(num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS)
        seconds, texts = {few_row: [] for few_row in KERNELS}, {few_row: [] for few_row in KERNELS}
        requests = SENTENCES * rounds
        for i, sentence in enumerate(requests):
            for few_row in (False, True) if i % 2 == 0 else (True, False):
                started = time.perf_counter()
                texts[few_row].append(runners[few_row].translate("en-de", [sentence], options))
                seconds[few_row].append(time.perf_counter() - started)
        identical = sum(a == b for a, b in zip(texts[False], texts[True], strict=True))
        median = {few_row: statistics.median(seconds[few_row]) for few_row in KERNELS}
        for few_row, name in KERNELS.items():
            rows.append((decoding, name, median[few_row] * 1000, median[False] / median[few_row],
                         f"{identical}/{len(requests)}" if few_row else "-"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--size", choices=["tiny", "medium"], default="medium")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--kernel-rounds", type=int, default=8, help="passes over the sentences per kernel cell")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as work:
        model_dir = TINY if args.size == "tiny" else medium_model(Path(work))
        # First, while only this thread has used torch: once a server's threads have too, their OpenMP pools
        # outnumber the cores, libgomp stops spinning and every parallel op waits on a wake-up, which slowed
        # these small calls 1.6x with stock kernels and 2.3x with few-row ones (more ops per layer).
        kernel_rows = compare_kernels(model_dir, args.kernel_rounds)
        rows = []
        baseline = {}
        for batching in (False, True):
            settings = TranslationSettings(
                models={"en-de": str(model_dir)}, log_level="warning", max_queue=1024,
                max_batch_size=16 if batching else 1, max_wait_ms=5 if batching else 0,
            )
            with ServerThread(lambda s=settings: [create_service(s)], settings) as server:
                for concurrency in args.concurrency:
                    asyncio.run(post_load(server.rest_url + "/v1/translate", bodies(4), concurrency))  # warm the connection pool
                    elapsed, latencies = asyncio.run(
                        post_load(server.rest_url + "/v1/translate", bodies(args.requests), concurrency)
                    )
                    throughput = args.requests / elapsed
                    if not batching:
                        baseline[concurrency] = throughput
                    rows.append((concurrency, "on" if batching else "off", throughput,
                                 throughput / baseline[concurrency], percentile(latencies, 50) * 1000,
                                 percentile(latencies, 95) * 1000))

        # Server overhead: the same loaded model called in-process vs over REST, interleaved so that
        # load on the machine hits both alike.
        settings = TranslationSettings(models={"en-de": str(model_dir)}, log_level="warning", max_wait_ms=0)
        with ServerThread(lambda: [create_service(settings)], settings) as server:
            runner = server.services[0].runner
            options = GenerationOptions(max_new_tokens=MAX_NEW_TOKENS)
            direct, served = [], []
            with httpx.Client(timeout=300) as client:
                for sentence in SENTENCES * 4:
                    started = time.perf_counter()
                    runner.translate("en-de", [sentence], options)
                    direct.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    client.post(server.rest_url + "/v1/translate", json={
                        "text": sentence, "source_lang": "en", "target_lang": "de", "max_new_tokens": MAX_NEW_TOKENS,
                    }).raise_for_status()
                    served.append(time.perf_counter() - started)

    print(f"\n### Translation ({args.size} model, {args.requests} requests per cell, max_new_tokens {MAX_NEW_TOKENS})\n")
    print("| concurrency | batching | req/s | vs off | p50 ms | p95 ms |")
    print("|---:|:---:|---:|---:|---:|---:|")
    for concurrency, batching, throughput, ratio, p50, p95 in sorted(rows):
        print(f"| {concurrency} | {batching} | {throughput:.1f} | {ratio:.2f}x | {p50:.0f} | {p95:.0f} |")
    direct_ms, served_ms = statistics.median(direct) * 1000, statistics.median(served) * 1000
    print(f"\n| path (concurrency 1) | median ms |\n|---|---:|\n| runner in-process | {direct_ms:.1f} |")
    print(f"| REST server | {served_ms:.1f} |\n| server overhead | {served_ms - direct_ms:.1f} |")
    print(f"\n| decoding (runner in-process, concurrency 1, {len(SENTENCES) * args.kernel_rounds} requests) "
          "| linear kernels | median ms | speed-up vs stock | identical text |")
    print("|---|---|---:|---:|---:|")
    for decoding, kernels, ms, speedup, identical in kernel_rows:
        print(f"| {decoding} | {kernels} | {ms:.1f} | {speedup:.2f}x | {identical} |")


if __name__ == "__main__":
    main()
