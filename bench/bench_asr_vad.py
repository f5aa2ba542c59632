"""Long audio with pauses: Whisper's sequential long-form decoding vs voice-activity chunking (services/asr/chunking.py).

    python bench/bench_asr_vad.py [--minutes 10] [--threads 2] [--pause 2,6] [--seed 0]

The clip: the held-out English sentences of `make real-asr` (models/real/speech, refs.tsv) in turn, each after a
pause of digital silence drawn uniformly from --pause seconds, until --minutes are filled; its reference is their
texts in order. Real whisper-base with its 2-layer assistant (the service's runner and default settings) decodes it
three ways, greedy, once each:

- long-form, assisted: the runner's path for a request decoded alone, 30 s windows one after another;
- long-form, plain: the same windows without the assistant;
- chunked: Silero VAD, then the speech packed into <= 30 s chunks decoded in batches of the runner's
  max_batch_size on the plain path (the VAD's own time is included and also shown apart).

Then 40 s of digital silence and of faint noise, long-form and chunked: what does each transcribe?
Word error rate: lower-cased words without punctuation, Levenshtein over words. The 10-minute clip: about 2 minutes
in all with --threads 1 on a quiet machine; on 2 shared, busy cores wall times swing by 3x between runs (compare CPU
seconds with --threads 1 there).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.asr.chunking import AUTO, find_chunks, transcribe_chunked  # noqa: E402
from services.asr.runner import SAMPLE_RATE, ASRJob, ASRRunner  # noqa: E402
from services.asr.settings import ASRSettings  # noqa: E402
from services.asr.vad import default_vad  # noqa: E402
from services.kit.testing import word_error_rate, words  # noqa: E402

REAL = REPO / "models" / "real"


def long_clip(
    speech: Path, seconds: float, pause: tuple[float, float], seed: int
) -> tuple[np.ndarray, str, float]:
    """(audio, reference text, seconds of speech)."""
    clips = []
    for line in (speech / "refs.tsv").read_text(encoding="utf-8").splitlines():
        clip_id, language, _voice, text = line.split("\t")
        if language == "en":
            audio, rate = sf.read(speech / f"{clip_id}.wav", dtype="float32")
            assert rate == SAMPLE_RATE
            clips.append((audio, text))
    rng = np.random.default_rng(seed)
    parts, texts, length, spoken, i = [], [], 0, 0, 0
    target = int(seconds * SAMPLE_RATE)
    while True:
        audio, text = clips[i % len(clips)]
        gap = np.zeros(int(rng.uniform(*pause) * SAMPLE_RATE), dtype=np.float32)
        if length + gap.size + audio.size > target:
            break
        parts += [gap, audio]
        texts.append(text)
        length += gap.size + audio.size
        spoken += audio.size
        i += 1
    parts.append(np.zeros(target - length, dtype=np.float32))
    return np.concatenate(parts), " ".join(texts), spoken / SAMPLE_RATE


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    started, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, default=REAL, help="folder made by `make real-asr`")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy shared machine)")
    parser.add_argument("--pause", default="2,6", help="pause between sentences: min,max seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.models / "whisper-base" / "model.safetensors").is_file():
        sys.exit(f"{args.models} has no whisper-base: run `make real-asr` first")
    torch.set_num_threads(args.threads)
    pause = tuple(float(s) for s in args.pause.split(","))
    audio, reference, spoken = long_clip(args.models / "speech", args.minutes * 60, pause, args.seed)
    duration = audio.size / SAMPLE_RATE

    settings = ASRSettings(
        model=str(args.models / "whisper-base"),
        assistant_model=str(args.models / "whisper-base-assistant-2l"),
        threads=args.threads,
        max_audio_seconds=max(1800.0, duration),
        log_level="warning",
    )
    runner = ASRRunner(settings)
    runner.load()
    runner.warmup()
    vad = default_vad()
    find_chunks(audio[: 10 * SAMPLE_RATE], AUTO, vad)  # warm-up

    job = ASRJob(audio, language="en")
    chunks, vad_seconds, _ = timed(lambda: find_chunks(audio, AUTO, vad))
    chunk_audio = sum(chunk.samples for chunk in chunks) / SAMPLE_RATE
    rows = []
    for name, run, windows in (
        (
            "long-form, assisted (the runner's path for a lone request)",
            lambda: runner.transcribe([job], "assisted")[0],
            f"all {duration:.0f} s, 30 s windows in turn",
        ),
        (
            "long-form, plain",
            lambda: runner.transcribe([job], "plain")[0],
            f"all {duration:.0f} s, 30 s windows in turn",
        ),
        (
            "chunked (Silero VAD + plain batched)",
            lambda: transcribe_chunked(runner, job, AUTO, vad=vad),
            f"{len(chunks)} chunks ({chunk_audio:.0f} s of audio), batches of {settings.max_batch_size}",
        ),
    ):
        print(f"  {name} ...", file=sys.stderr, flush=True)
        passes = runner.main_passes
        transcript, seconds, cpu = timed(run)
        passes = runner.main_passes - passes
        rows.append((name, seconds, cpu, word_error_rate(reference, transcript.text), passes, windows))

    print(
        f"# {duration / 60:.1f} min clip: {len(words(reference))} reference words, {spoken:.0f} s of speech "
        f"({spoken / duration:.0%}), pauses {pause[0]:g}-{pause[1]:g} s; whisper-base, greedy, fp32, "
        f"{args.threads} threads\n"
    )
    print(
        "| decoding | seconds | CPU seconds | audio s per second | WER | main decoder passes | what is decoded |\n"
        "|---|---:|---:|---:|---:|---:|---|"
    )
    for name, seconds, cpu, error_rate, passes, windows in rows:
        print(
            f"| {name} | {seconds:.1f} | {cpu:.1f} | {duration / seconds:.1f} | {error_rate:.3f} | {passes} "
            f"| {windows} |"
        )
    print(
        "\nOn a shared machine wall seconds follow the load: with --threads 1, CPU seconds (the whole process) "
        "barely do, and main decoder passes not at all (a pass decodes one step of every row of its batch; the "
        "assisted path verifies several drafted tokens per pass)."
    )
    print(f"The chunked time includes Silero VAD over the whole clip: {vad_seconds:.2f} s.\n")

    rng = np.random.default_rng(args.seed)
    print("| 40 s of | long-form, plain | chunked |\n|---|---|---|")
    for name, samples in (
        ("digital silence", np.zeros(40 * SAMPLE_RATE, dtype=np.float32)),
        ("faint noise (-50 dBFS)", (0.003 * rng.standard_normal(40 * SAMPLE_RATE)).astype(np.float32)),
    ):
        silent = ASRJob(samples, language="en")
        plain = runner.transcribe([silent], "plain")[0].text
        chunked = transcribe_chunked(runner, silent, AUTO, vad=vad).text
        print(f"| {name} | {plain[:120]!r}{'...' if len(plain) > 120 else ''} | {chunked!r} |")


if __name__ == "__main__":
    main()
