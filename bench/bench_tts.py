"""TTS speed: real-time factor, time to first audio with and without streaming, batched sentences.

    python bench/bench_tts.py [--size small|base|tiny] [--repeats 2] [--threads N]

A five-sentence paragraph goes through the real server (REST) as one file and as a stream, and through
the model runner in-process as one batched generate call versus one call per sentence. `small` and
`base` are random-weight models (see SIZES) where model time dominates as it does with the real
checkpoints; `tiny` is the test model. Random weights never emit a meaningful stop probability, so
every sentence is decoded to LENGTH_RATIO spectrogram frames per token (~15 characters a second, like
natural speech).

Last, the runner's synthesis with torch's stock linear kernels vs the kit's few-row kernels
(`few_row_linears` off and on), both in this process with the same weights.
"""

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from transformers import SpeechT5Config, SpeechT5ForTextToSpeech, SpeechT5HifiGan, SpeechT5HifiGanConfig

from services.kit.testing import ServerThread
from services.tts.runner import SpeechRunner
from services.tts.service import create_service
from services.tts.settings import TTSSettings

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tts"
LENGTH_RATIO = 4.0
KERNELS = {False: "stock", True: "few-row"}  # few_row_linears setting -> name
SAMPLE_RATE = 16000
PCM_SAMPLE_RATE = 24000  # the server's pcm is OpenAI's
PARAGRAPH = (
    "Speech synthesis turns written text into spoken audio. "
    "This service splits long input into sentences before it speaks. "
    "Sentences are synthesized together in one batch to use the hardware well. "
    "Streaming sends each sentence as soon as it is ready. "
    "The listener hears the first words long before the last ones are made."
)


# Random-weight models built here (with the tiny tokenizer): `base` is the real microsoft/speecht5_tts and
# speecht5_hifigan architecture (the configs' defaults); `small` halves its widths and the encoder depth.
SIZES = {
    "base": ({}, {}),
    "small": (
        dict(
            hidden_size=384,
            encoder_layers=6,
            encoder_attention_heads=6,
            decoder_attention_heads=6,
            encoder_ffn_dim=1536,
            decoder_ffn_dim=1536,
        ),
        dict(upsample_initial_channel=256),
    ),
}


def random_models(work: Path, size: str) -> tuple[Path, Path]:
    tts_options, vocoder_options = SIZES[size]
    tts_dir, vocoder_dir = work / "speecht5_tts", work / "speecht5_hifigan"
    shutil.copytree(
        TINY / "speecht5_tts", tts_dir, ignore=shutil.ignore_patterns("*.safetensors", "config.json")
    )
    vocab_size = SpeechT5Config.from_pretrained(TINY / "speecht5_tts").vocab_size
    torch.manual_seed(0)
    SpeechT5ForTextToSpeech(SpeechT5Config(vocab_size=vocab_size, **tts_options)).save_pretrained(tts_dir)
    SpeechT5HifiGan(SpeechT5HifiGanConfig(**vocoder_options)).save_pretrained(vocoder_dir)
    return tts_dir, vocoder_dir


def settings_for(tts_dir: Path, vocoder_dir: Path, threads: int | None) -> TTSSettings:
    return TTSSettings(
        model=str(tts_dir),
        vocoder=str(vocoder_dir),
        vc_model=str(TINY / "speecht5_vc"),
        voices_dir=TINY / "voices",
        threads=threads,
        stop_threshold=3.0,
        min_len_ratio=LENGTH_RATIO,
        max_len_ratio=LENGTH_RATIO,
        request_timeout_s=600,
        log_level="warning",
    )


def whole_file(url: str) -> tuple[float, float, float]:
    """(time to first audio, total, audio seconds) for a non-streaming request: audio comes all at once."""
    started = time.perf_counter()
    body = {"input": PARAGRAPH, "response_format": "pcm", "stream": False}  # pcm streams by default
    response = httpx.post(url, json=body, timeout=600)
    response.raise_for_status()
    total = time.perf_counter() - started
    return total, total, len(response.content) / 2 / PCM_SAMPLE_RATE


def streamed(url: str) -> tuple[float, float, float]:
    body = {"input": PARAGRAPH, "response_format": "pcm", "stream": True}
    started = time.perf_counter()
    first, size = None, 0
    with httpx.stream("POST", url, json=body, timeout=600) as response:
        response.raise_for_status()
        for piece in response.iter_raw():
            first = first or time.perf_counter() - started
            size += len(piece)
    return first, time.perf_counter() - started, size / 2 / PCM_SAMPLE_RATE


def in_process(runner: SpeechRunner, batched: bool) -> tuple[float, float, float]:
    """(time to first sentence, total, audio seconds) calling the runner directly."""
    sentences = runner.sentences(PARAGRAPH)
    voice = runner.voices.get(None)
    started = time.perf_counter()
    if batched:
        waveforms = runner.synthesize(
            [s.token_ids for s in sentences], [voice] * len(sentences), [1.0] * len(sentences)
        )
        first = time.perf_counter() - started
    else:
        waveforms, first = [], None
        for sentence in sentences:
            waveforms += runner.synthesize([sentence.token_ids], [voice], [1.0])
            first = first or time.perf_counter() - started
    return first, time.perf_counter() - started, sum(w.size for w in waveforms) / SAMPLE_RATE


def median_of(repeats: int, measure) -> tuple[float, float, float]:
    runs = [measure() for _ in range(repeats)]
    return tuple(statistics.median(run[i] for run in runs) for i in range(3))


def compare_kernels(settings: TTSSettings, repeats: int) -> list[tuple]:
    """The runner's synthesis of one sentence alone (one row per decoding step, like a stream's first
    sentence) and of the whole paragraph in one call, with few_row_linears off and on: the same weights loaded
    twice in this process, called alternately, in alternating order, so that load on the machine hits both
    alike. Rows: (call, kernels, median s, vs stock, samples, max abs difference from stock's waveform)."""
    runners = {}
    for few_row in KERNELS:
        runners[few_row] = SpeechRunner(settings.model_copy(update={"few_row_linears": few_row}))
        runners[few_row].load()
        runners[few_row].warmup()
    sentences = runners[False].sentences(PARAGRAPH)
    voice = runners[False].voices.get(None)
    calls = {
        "first sentence alone (1 row)": sentences[:1],
        f"all {len(sentences)} sentences in one call ({len(sentences)} rows)": sentences,
    }
    rows = []
    for call, batch in calls.items():
        seconds, waveforms = {few_row: [] for few_row in KERNELS}, {}
        for repeat in range(repeats):
            for few_row in (False, True) if repeat % 2 == 0 else (True, False):
                # The same seed for both: the decoder pre-net's dropout (on at inference) draws the same masks.
                torch.manual_seed(0)
                started = time.perf_counter()
                waveforms[few_row] = runners[few_row].synthesize(
                    [s.token_ids for s in batch], [voice] * len(batch), [1.0] * len(batch)
                )
                seconds[few_row].append(time.perf_counter() - started)
        pairs = list(zip(waveforms[False], waveforms[True], strict=True))
        if all(stock.size == few_row_audio.size for stock, few_row_audio in pairs):
            # Random weights make quiet audio: the peak gives the difference its scale.
            largest = max(float(np.abs(stock - few_row_audio).max()) for stock, few_row_audio in pairs)
            peak = max(float(np.abs(stock).max()) for stock, _ in pairs)
            difference = f"{largest:.1e} (peak {peak:.1e})"
        else:
            difference = "lengths differ"
        median = {few_row: statistics.median(seconds[few_row]) for few_row in KERNELS}
        for few_row, kernels in KERNELS.items():
            samples = sum(w.size for w in waveforms[few_row])
            shown = difference if few_row else "-"
            rows.append((call, kernels, median[few_row], median[few_row] / median[False], samples, shown))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["small", "base", "tiny"], default="small")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--kernel-repeats", type=int, default=3, help="calls per cell of the linear kernel comparison"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        if args.size == "tiny":
            tts_dir, vocoder_dir = TINY / "speecht5_tts", TINY / "speecht5_hifigan"
        else:
            tts_dir, vocoder_dir = random_models(Path(work), args.size)
        settings = settings_for(tts_dir, vocoder_dir, args.threads)
        # First, while only this thread has used torch: once a server's threads have too, their OpenMP pools
        # can outnumber the cores, libgomp then stops spinning and every parallel op waits on a wake-up.
        kernel_rows = compare_kernels(settings, args.kernel_repeats)
        rows = {}
        with ServerThread(lambda: [create_service(settings)], settings) as server:
            url = f"{server.rest_url}/v1/audio/speech"
            runner: SpeechRunner = server.services[0].runner
            device = runner.runtime.device
            sentences = len(runner.sentences(PARAGRAPH))
            rows["REST, whole file (sentences batched)"] = median_of(args.repeats, lambda: whole_file(url))
            rows["REST, streamed (first sentence, then the rest batched)"] = median_of(
                args.repeats, lambda: streamed(url)
            )
            # The server is idle between requests, so the runner can be called from here directly.
            rows["runner, one generate call per sentence"] = median_of(
                args.repeats, lambda: in_process(runner, False)
            )
            rows["runner, all sentences in one generate call"] = median_of(
                args.repeats, lambda: in_process(runner, True)
            )

    baseline_first, baseline_total, _ = rows["REST, whole file (sentences batched)"]
    print(
        f"\n### TTS ({args.size} model on {device}, {sentences}-sentence paragraph of {len(PARAGRAPH)} "
        f"characters, median of {args.repeats})\n"
    )
    print("| path | first audio s | vs whole file | total s | vs whole file | audio s | real-time factor |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (first, total, audio) in rows.items():
        print(
            f"| {name} | {first:.2f} | {first / baseline_first:.2f}x | {total:.2f} "
            f"| {total / baseline_total:.2f}x | {audio:.1f} | {total / audio:.3f} |"
        )
    print("\nreal-time factor = synthesis seconds per second of audio (below 1: faster than real time);")
    print("REST audio includes the 250 ms pauses between sentences, the runner's does not.")
    print(
        f"\n| runner call (median of {args.kernel_repeats}) | linear kernels | s | vs stock | samples "
        "| max abs difference from stock |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for call, kernels, seconds, ratio, samples, difference in kernel_rows:
        print(f"| {call} | {kernels} | {seconds:.2f} | {ratio:.2f}x | {samples} | {difference} |")


if __name__ == "__main__":
    main()
