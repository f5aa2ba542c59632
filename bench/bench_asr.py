"""Assisted (speculative) vs plain Whisper decoding, alone and under load.

    python bench/bench_asr.py [--clips 6] [--rounds 1] [--levels 1,4,8,16] [--threshold N] [--max-wait-ms MS]
                              [--threads 1] [--skip-load]

1. Batch size 1, in process (the service's runner): plain vs assisted latency, main-decoder forward passes,
   drafted/accepted tokens and whether every transcript is token-for-token the plain one. On the tiny test pair
   (`make models`) and on a larger random pair built here: main with 6 decoder layers at d_model 384 (2 encoder
   layers), assistant a 1-layer decoder reading the main encoder's outputs (distil-whisper style) initialised
   from the main's last layer, so that drafts agree with the main model at a realistic rate.
2. The real server with the larger pair: throughput and p95 latency at each concurrency for always-assisted
   (`decoding=assisted`), never-assisted (`decoding=plain`) and adaptive (`auto`) requests: `concurrency` users
   send requests back to back; the three modes run in an order that rotates from level to level (and round to
   round with `--rounds`), so that load from elsewhere on the machine hurts them alike.

Random weights rarely emit end-of-text, so every window decodes `--max-new-tokens` tokens (a ~20 s utterance's
worth). Timings on a shared machine are noisy: compare ratios within one run.
"""

import argparse
import concurrent.futures
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch
from transformers import GenerationConfig, WhisperConfig, WhisperForCausalLM, WhisperForConditionalGeneration

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.asr.runner import ASRJob, ASRRunner, DecodeOptions  # noqa: E402
from services.asr.service import create_service  # noqa: E402
from services.asr.settings import ASRSettings  # noqa: E402
from services.kit.testing import ServerThread  # noqa: E402

TINY = REPO / "models" / "asr" / "whisper"
TINY_ASSISTANT = REPO / "models" / "asr" / "whisper-assistant"
# How much the main model's first five decoder layers add to the residual stream. The assistant copies the last
# layer, so at 0 its drafts are always accepted; this much noise makes it right about 3 times in 4.
DISAGREEMENT = 1.5e-5


def speech_like(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    phase = 2 * np.pi * np.cumsum(rng.uniform(90, 260) * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))) / 16000
    voice = sum(rng.uniform(0.1, 0.5) / k * np.sin(k * phase) for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t)
    audio = 0.6 * voice * envelope + 0.02 * rng.standard_normal(t.size)
    return (audio / max(1.0, np.abs(audio).max())).astype(np.float32)


def build_larger_pair(work: Path) -> tuple[Path, Path]:
    """Main: 6 decoder layers at d_model 384; assistant: 1 layer sharing the encoder; the tiny pair's tokenizer."""
    main_dir, assistant_dir = work / "whisper-384", work / "whisper-384-assistant"
    shutil.copytree(TINY, main_dir)
    tiny = WhisperConfig.from_pretrained(TINY)
    config = WhisperConfig(
        **{
            **tiny.to_dict(),
            "d_model": 384,
            "encoder_layers": 2,
            "decoder_layers": 6,
            "encoder_attention_heads": 6,
            "decoder_attention_heads": 6,
            "encoder_ffn_dim": 1536,
            "decoder_ffn_dim": 1536,
        }
    )
    torch.manual_seed(0)
    main = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for layer in main.model.decoder.layers[:-1]:
            for proj in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                proj.weight.mul_(DISAGREEMENT)
                proj.bias.mul_(DISAGREEMENT)
    generation = GenerationConfig.from_pretrained(TINY).to_diff_dict()
    # The tiny pair biases 1,501 timestamp tokens down one by one so that it can still emit them; this benchmark
    # asks for no timestamps, so suppress them instead (real checkpoints carry neither).
    timestamps = [bias[0][0] for bias in generation.pop("sequence_bias")]
    generation["suppress_tokens"] = sorted(set(generation["suppress_tokens"]) | set(timestamps))
    main.generation_config = GenerationConfig(**generation)
    main.save_pretrained(main_dir)
    assistant = WhisperForCausalLM(WhisperConfig(**{**config.to_dict(), "decoder_layers": 1})).eval()
    source, target = main.model.decoder, assistant.model.decoder
    with torch.no_grad():
        target.embed_tokens.load_state_dict(source.embed_tokens.state_dict())
        target.embed_positions.load_state_dict(source.embed_positions.state_dict())
        target.layers[0].load_state_dict(source.layers[-1].state_dict())
        target.layer_norm.load_state_dict(source.layer_norm.state_dict())
    assistant.generation_config = GenerationConfig(
        **main.generation_config.to_diff_dict(),
        # Random weights are never confident: without a threshold of 0 the assistant drafts one token a round.
        assistant_confidence_threshold=0.0,
        num_assistant_tokens=8,
        num_assistant_tokens_schedule="constant",
    )
    assistant.save_pretrained(assistant_dir)
    return main_dir, assistant_dir


def batch1(name: str, main: Path, assistant: Path, clips: int, threads: int, max_new_tokens: int) -> dict:
    runner = ASRRunner(
        ASRSettings(
            model=str(main), assistant_model=str(assistant), threads=threads, max_new_tokens=max_new_tokens
        )
    )
    runner.load()
    torch.set_num_threads(threads)
    runner.warmup()
    jobs = [ASRJob(speech_like(3 + i % 5, seed=i), DecodeOptions(), "en") for i in range(clips)]
    times = {"plain": [], "assisted": []}
    passes = {"plain": 0, "assisted": 0}
    identical = True
    drafted_before, accepted_before = runner.draft_counts()
    for i, job in enumerate(jobs):
        tokens = {}
        # Alternate which path runs first so that neither always gets a warm cache.
        for path in ("plain", "assisted") if i % 2 == 0 else ("assisted", "plain"):
            before = runner.main_passes
            started = time.perf_counter()
            tokens[path] = runner.transcribe([job], path, record=False)[0].tokens
            times[path].append(time.perf_counter() - started)
            passes[path] += runner.main_passes - before
        identical &= tokens["plain"] == tokens["assisted"]
    # The encoder runs once per clip on either path; speculative decoding only shortens what follows it.
    encoder = []
    with torch.inference_mode():
        for job in jobs:
            features = runner._features([job]).input_features
            started = time.perf_counter()
            runner.model.model.encoder(features)
            encoder.append(time.perf_counter() - started)
    encoder_s = statistics.median(encoder)
    drafted_now, accepted_now = runner.draft_counts()
    drafted, accepted = drafted_now - drafted_before, accepted_now - accepted_before
    plain, assisted = statistics.median(times["plain"]), statistics.median(times["assisted"])
    return {
        "pair": name,
        "plain_s": plain,
        "assisted_s": assisted,
        "speedup": plain / assisted,
        "encoder_s": encoder_s,
        "decode_speedup": (plain - encoder_s) / (assisted - encoder_s),
        "plain_passes": passes["plain"] / clips,
        "assisted_passes": passes["assisted"] / clips,
        "acceptance": accepted / drafted if drafted else 0.0,
        "identical": identical,
    }


def wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16000, format="WAV")
    return buffer.getvalue()


def run_users(
    url: str, decoding: str, concurrency: int, per_user: int, clips: list[bytes]
) -> tuple[float, list]:
    """`concurrency` users each sending `per_user` requests back to back; (wall seconds, [(latency, path)])."""
    results = []

    def user(index: int) -> None:
        with httpx.Client(timeout=600) as client:
            for n in range(per_user):
                clip = clips[(index * per_user + n) % len(clips)]
                started = time.perf_counter()
                response = client.post(
                    url + "/v1/audio/transcriptions",
                    data={"decoding": decoding, "language": "en"},
                    files={"file": ("clip.wav", clip, "audio/wav")},
                )
                response.raise_for_status()
                results.append((time.perf_counter() - started, response.json()["decoding"]))

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(user, range(concurrency)))
    return time.perf_counter() - started, results


def load_level(url: str, concurrency: int, rounds: int, clips: list[bytes]) -> dict:
    """The three modes in rotating order, `rounds` times, so that a noisy neighbour hurts them alike."""
    modes = ("assisted", "plain", "auto")
    wall = dict.fromkeys(modes, 0.0)
    results = {mode: [] for mode in modes}
    per_user = max(1, 4 // concurrency)
    for r in range(concurrency, concurrency + rounds):
        for mode in modes[r % 3 :] + modes[: r % 3]:
            seconds, answered = run_users(url, mode, concurrency, per_user, clips)
            wall[mode] += seconds
            results[mode] += answered
    return {
        mode: {
            "throughput": len(results[mode]) / wall[mode],
            "p95": float(np.percentile([latency for latency, _ in results[mode]], 95)),
            "assisted_share": [path for _, path in results[mode]].count("assisted") / len(results[mode]),
        }
        for mode in modes
    }


def under_load(main: Path, assistant: Path, levels: list[int], rounds: int, args: argparse.Namespace) -> list:
    tuning = {"adaptive_threshold": args.threshold} if args.threshold is not None else {}
    if args.max_wait_ms is not None:
        tuning["max_wait_ms"] = args.max_wait_ms
    settings = ASRSettings(
        **tuning,
        model=str(main),
        assistant_model=str(assistant),
        threads=args.threads,
        max_new_tokens=args.max_new_tokens,
        max_batch_size=max(levels),
        max_queue=4 * max(levels),
        request_timeout_s=600,
        log_level="warning",
    )
    clips = [wav(speech_like(4 + i % 3, seed=100 + i)) for i in range(8)]
    rows = []
    print_load_header(settings)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        for concurrency in levels:
            row = {"concurrency": concurrency, **load_level(server.rest_url, concurrency, rounds, clips)}
            rows.append(row)
            print_load_row(row, flush=True)
    return rows


def print_batch1(rows: list[dict]) -> None:
    print("\n## Batch size 1: plain vs assisted (median latency per clip)\n")
    print(
        "| pair | plain s | assisted s | speed-up | of which encoder s | decoding speed-up "
        "| main passes plain | main passes assisted | acceptance | identical |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['pair']} | {r['plain_s']:.3f} | {r['assisted_s']:.3f} | {r['speedup']:.2f}x "
            f"| {r['encoder_s']:.3f} | {r['decode_speedup']:.2f}x "
            f"| {r['plain_passes']:.1f} | {r['assisted_passes']:.1f} | {r['acceptance']:.0%} "
            f"| {'yes' if r['identical'] else 'NO'} |"
        )


def print_load_header(settings: ASRSettings) -> None:
    print(
        "\n## Through the server, larger pair: throughput (req/s) and p95 latency (s); adaptive threshold "
        f"{settings.adaptive_threshold}, batching window {settings.max_wait_ms:g} ms\n"
    )
    print(
        "| concurrency | always-assisted req/s | p95 | never-assisted req/s | p95 | adaptive req/s | p95 "
        "| adaptive assisted share | adaptive vs best fixed |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def print_load_row(row: dict, flush: bool = False) -> None:
    a, p, auto = row["assisted"], row["plain"], row["auto"]
    best = max(a["throughput"], p["throughput"])
    print(
        f"| {row['concurrency']} | {a['throughput']:.2f} | {a['p95']:.2f} | {p['throughput']:.2f} | {p['p95']:.2f} "
        f"| {auto['throughput']:.2f} | {auto['p95']:.2f} | {auto['assisted_share']:.0%} "
        f"| {auto['throughput'] / best:.2f}x |",
        flush=flush,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=6, help="clips per pair at batch size 1")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds per concurrency; each user sends max(1, 4 / concurrency) a round",
    )
    parser.add_argument("--levels", default="1,4,8,16", help="concurrency levels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 suits a shared machine)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument(
        "--threshold", type=int, help="ASR_ADAPTIVE_THRESHOLD for the server (default: service's)"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, help="ASR_MAX_WAIT_MS for the server (default: service's)"
    )
    parser.add_argument("--skip-load", action="store_true", help="only the batch-size-1 comparison")
    args = parser.parse_args()
    if not TINY.is_dir():
        sys.exit("tiny models missing: run `make models` first")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-asr-") as work:
        main_dir, assistant_dir = build_larger_pair(Path(work))
        rows = [
            batch1("tiny (test pair)", TINY, TINY_ASSISTANT, args.clips, args.threads, args.max_new_tokens),
            batch1(
                "6-layer d384 + 1-layer",
                main_dir,
                assistant_dir,
                args.clips,
                args.threads,
                args.max_new_tokens,
            ),
        ]
        print_batch1(rows)
        if not args.skip_load:
            levels = [int(level) for level in args.levels.split(",")]
            under_load(main_dir, assistant_dir, levels, args.rounds, args)
    print(f"\n{args.threads} torch thread(s); {time.perf_counter() - started:.0f} s in all.")


if __name__ == "__main__":
    main()
