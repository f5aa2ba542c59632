"""ViT on the TF Serving protocol: images/s and latency through the real server with batching on and off,
plus the per-image cost split into decode/preprocess and model.

    python bench/bench_vit.py [--size tiny|small] [--requests 96] [--concurrency 1 8 16]

`tiny` is the offline test checkpoint (2 layers, width 32: preprocessing dominates); `small` is a random
ViT with 6 layers of width 192 (built here, same preprocessor), where the model's share is closer to a real
checkpoint's. Every request carries one 320x240 JPEG as URL-safe base64, as the Hugging Face blog's client
sends it. The load generator runs in the server's process (GIL shared), as in the other benches.
"""

import argparse
import asyncio
import base64
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from loadgen import percentile, post_load
from PIL import Image

from services.kit.testing import ServerThread
from services.vit.export import export_saved_model
from services.vit.server import create_service
from services.vit.settings import ViTSettings

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "vit" / "hf-vit"
THREADS = 2


def small_checkpoint(work: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    target = work / "vit-small"
    shutil.copytree(TINY, target)
    config = ViTConfig.from_pretrained(TINY)
    config.update(dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768))
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(target, safe_serialization=True)
    return target


def photos(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    out = []
    for _ in range(count):
        base = np.stack([xx * 255 / 320, yy * 255 / 240, (xx + yy) * 0.23], axis=-1) * rng.uniform(0.3, 1, 3)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)).save(
            buffer, "JPEG", quality=90
        )
        out.append(buffer.getvalue())
    return out


def timed(fn, repeat: int, rounds: int = 5) -> float:
    """Seconds per call, best of several rounds: the machine is shared, the minimum is the model's cost."""
    fn()  # the first call traces and allocates
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best


def cost_split(version_dir: Path, images: list[bytes]) -> list[tuple[int, float, float]]:
    """Per-image ms of serving_default (decode+preprocess+model) and pixel_values (model only)."""
    signatures = tf.saved_model.load(str(version_dir)).signatures
    rows = []
    for batch in (1, 8):
        strings = tf.constant([base64.urlsafe_b64encode(images[i % len(images)]) for i in range(batch)])
        pixels = tf.random.uniform([batch, 3, 224, 224], -1, 1)
        total = timed(lambda s=strings: signatures["serving_default"](string_input=s), 4) / batch
        model = timed(lambda p=pixels: signatures["pixel_values"](pixel_values=p), 4) / batch
        rows.append((batch, total * 1000, model * 1000))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--requests", type=int, default=96, help="requests (one image each) per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = TINY if args.size == "tiny" else small_checkpoint(work)
        version_dir = export_saved_model(checkpoint, work / "models")
        images = photos(16)
        bodies = [
            {"instances": [base64.urlsafe_b64encode(images[i % len(images)]).decode()]}
            for i in range(args.requests)
        ]

        print(f"\n## ViT ({args.size}) per-image cost, {THREADS} TF threads, 320x240 JPEG in\n")
        print(
            "| batch | serving_default ms/img | model only (pixel_values) ms/img | decode+preprocess ms/img | "
            "preprocess share |"
        )
        print("|---:|---:|---:|---:|---:|")
        for batch, total, model in cost_split(version_dir, images):
            print(
                f"| {batch} | {total:.1f} | {model:.1f} | {total - model:.1f} | {(total - model) / total:.0%} |"
            )

        servers = {}
        for mode, overrides in (
            ("off", dict(max_batch_size=1, max_wait_ms=0)),
            ("on", dict(max_batch_size=16, max_wait_ms=5)),
        ):
            settings = ViTSettings(
                model_base=work / "models",
                checkpoint=None,
                poll_interval_s=0,
                threads=THREADS,
                log_level="warning",
                **overrides,
            )
            servers[mode] = ServerThread(lambda s=settings: [create_service(s)], settings).start()
        results: dict[tuple[str, int], tuple[float, float, float]] = {}
        try:
            for server in servers.values():
                asyncio.run(post_load(f"{server.rest_url}/v1/models/hf-vit:predict", bodies[:8], 4))  # warm HTTP
            # Modes alternate and each keeps its best of two runs, so load from other processes on the
            # machine does not land on one side of the comparison only.
            for concurrency in args.concurrency:
                for _ in range(2):
                    for mode, server in servers.items():
                        url = f"{server.rest_url}/v1/models/hf-vit:predict"
                        elapsed, latencies = asyncio.run(post_load(url, bodies, concurrency))
                        measured = (
                            len(bodies) / elapsed,
                            percentile(latencies, 50) * 1000,
                            percentile(latencies, 95) * 1000,
                        )
                        if measured[0] > results.get((mode, concurrency), (0,))[0]:
                            results[mode, concurrency] = measured
        finally:
            for server in servers.values():
                server.stop()
                server.services[0].runner.close()

        print(f"\n## ViT ({args.size}) through the REST server, {args.requests} requests of one image\n")
        print("| batching | concurrency | images/s | p50 ms | p95 ms | images/s vs batching off |")
        print("|---|---:|---:|---:|---:|---:|")
        for (mode, concurrency), (rate, p50, p95) in sorted(
            results.items(), key=lambda kv: (kv[0][1], kv[0][0])
        ):
            baseline = results["off", concurrency][0]
            print(f"| {mode} | {concurrency} | {rate:.1f} | {p50:.0f} | {p95:.0f} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
