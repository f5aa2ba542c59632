"""Dynamic int8 linear layers (`<P>QUANTIZE=int8`) against float32 on CPU, per service: speed and fidelity.

    python bench/bench_quantize.py [--services asr,translation,tts] [--clips 12] [--threads 2]

Each service's own runner is loaded twice, with `quantize="none"` and `quantize="int8"`, and both run the same
inputs interleaved one by one (so a busy machine slows both alike); times are seconds for the whole set.

* asr: real whisper-base (`make real-asr`, models/real/) on the held-out English espeak clips, greedy, plain
  path, `language=en`: token agreement with float32 (% of clips whose generated token ids are identical) and
  WER of each against the reference sentences.
* translation: the tiny random-weight FSMT models (env/tiny.env; no real weights offline), greedy: % of texts
  whose translation is identical. Random weights say little about a trained model's sensitivity.
* tts: the tiny random-weight SpeechT5 (env/tiny.env), the same seed for both (its prenet's dropout is on at
  inference): mean absolute difference of the output's log-mel spectrogram (SpeechT5's own feature extractor)
  between float32 and int8, beside the float32 log-mel's own mean absolute value for scale. Same caveat.

`--encoder-dtype` prints ASR's other table instead: the encoder and its cross-attention projections in bfloat16
(`ASR_ENCODER_DTYPE`), then the vocabulary projection too (`ASR_HEAD_DTYPE`), against float32, on all 42 clips
(English, German, French), language given and detected.

The issue's rule for a default: int8 on CPU only where WER stays within 0.5 pt and tokens agree on >= 95 % of
the clips (services/*/settings.py QUANTIZE_AUTO_INT8). Timings are noisy on a shared machine: compare ratios.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.kit.launch import read_env_file  # noqa: E402
from services.kit.testing import word_error_rate  # noqa: E402

SENTENCES = [
    "Machine learning is great.",
    "Where is the station?",
    "The weather is nice today.",
    "Please close the door behind you.",
    "We will meet at the library tomorrow morning.",
    "How much does this book cost?",
    "The children played in the garden until dark.",
    "I would like a cup of coffee, please.",
    "Our train was delayed by forty minutes.",
    "She sent the letter last week.",
    "Can you help me find my keys?",
    "The museum opens at nine o'clock.",
]


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


REAL = REPO / "models" / "real"


def real_clips() -> list[tuple[str, np.ndarray, str]]:
    """(language, samples, reference) of every held-out espeak clip of `make real-asr`."""
    clips = []
    for line in (REAL / "speech" / "refs.tsv").read_text(encoding="utf-8").splitlines():
        clip_id, lang, _voice, text = line.split("\t")
        audio, _rate = sf.read(REAL / "speech" / f"{clip_id}.wav", dtype="float32")
        clips.append((lang, audio, text))
    return clips


def real_runner(args, **settings):
    """Real whisper-base on CPU without an assistant, loaded and warmed up, with these settings."""
    from services.asr.runner import ASRRunner
    from services.asr.settings import ASRSettings

    options = dict(model=str(REAL / "whisper-base"), assistant_model="", device="cpu", threads=args.threads)
    runner = ASRRunner(ASRSettings(**options, **settings))
    runner.load()
    runner.warmup()
    return runner


def bench_asr(args) -> dict:
    from services.asr.domain import ASRJob

    if not (REAL / "whisper-base").is_dir():
        print("asr: skipped (run `make real-asr` for models/real/whisper-base)")
        return {}
    clips = [(audio, text) for lang, audio, text in real_clips() if lang == "en"][: args.clips]
    # float32 against int8 alone (bfloat16 has its own table: --encoder-dtype)
    runners = {
        mode: real_runner(args, quantize=mode, encoder_dtype="float32", head_dtype="float32")
        for mode in ("none", "int8")
    }
    tokens = {mode: [] for mode in runners}
    seconds = dict.fromkeys(runners, 0.0)
    errors = {mode: [] for mode in runners}
    for audio, text in clips:
        for mode, runner in runners.items():
            [transcript], took = timed(runner.transcribe, [ASRJob(audio, language="en")], "plain")
            seconds[mode] += took
            tokens[mode].append(transcript.tokens)
            errors[mode].append(word_error_rate(text, transcript.text))
    agree = np.mean([a == b for a, b in zip(tokens["none"], tokens["int8"], strict=True)])
    wer = {mode: 100 * float(np.mean(e)) for mode, e in errors.items()}
    return {
        "set": f"real whisper-base, {len(clips)} en clips",
        "seconds": seconds,
        "fidelity": f"tokens agree {100 * agree:.1f} %, WER {wer['none']:.2f} -> {wer['int8']:.2f} %",
        "holds": agree >= 0.95 and wer["int8"] - wer["none"] <= 0.5,
    }


# What --encoder-dtype compares with float32: the audio side alone, then with the vocabulary projection too.
LOWERED = {
    "audio bf16": dict(encoder_dtype="bfloat16", head_dtype="float32"),
    "audio + head bf16": dict(encoder_dtype="bfloat16", head_dtype="bfloat16"),
}


def bench_encoder_dtype(args) -> None:
    """ASR_ENCODER_DTYPE / ASR_HEAD_DTYPE: real whisper-base with its audio side (and its head) in bfloat16 against
    float32, on every evaluation clip (English, German, French), with `language` given and detected: speed,
    token agreement and WER."""
    from services.asr.domain import ASRJob
    from services.kit.testing import word_alignment, words

    clips = real_clips()
    runners = {"float32": real_runner(args, encoder_dtype="float32", head_dtype="float32")}
    runners |= {name: real_runner(args, **settings) for name, settings in LOWERED.items()}
    rows = []
    for given in (True, False):
        for lang in dict.fromkeys(lang for lang, _, _ in clips):
            chosen = [(audio, text) for clip_lang, audio, text in clips if clip_lang == lang]
            seconds = dict.fromkeys(runners, 0.0)
            tokens, errors = {name: [] for name in runners}, dict.fromkeys(runners, 0)
            for audio, text in chosen:
                for name, runner in runners.items():
                    job = ASRJob(audio, language=lang if given else None)
                    [transcript], took = timed(runner.transcribe, [job], "plain")
                    seconds[name] += took
                    tokens[name].append(transcript.tokens)
                    errors[name] += sum(word_alignment(text, transcript.text))
            reference_words = sum(len(words(text)) for _, text in chosen)
            for name in LOWERED:
                same = sum(a == b for a, b in zip(tokens["float32"], tokens[name], strict=True))
                rows.append(
                    f"| {name} | {lang} | {len(chosen)} | {'given' if given else 'detected'} | "
                    f"{seconds['float32']:.2f} | {seconds[name]:.2f} | {seconds['float32'] / seconds[name]:.2f}x | "
                    f"{same}/{len(chosen)} | {100 * errors['float32'] / reference_words:.1f} -> "
                    f"{100 * errors[name] / reference_words:.1f} % |"
                )
    print(
        f"\nASR in bfloat16 against float32, real whisper-base, plain path, {args.threads} threads; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        "| bfloat16 | language | clips | `language` | float32 s | bfloat16 s | speed-up | identical tokens "
        "| WER float32 -> bfloat16 |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---|")
    print("\n".join(sorted(rows, key=lambda row: row.split(" | ")[0])))


def bench_translation(args) -> dict:
    from services.translation.runner import GenerationOptions, TranslationRunner
    from services.translation.settings import TranslationSettings

    runners = {}
    for mode in ("none", "int8"):
        runners[mode] = TranslationRunner(
            TranslationSettings(quantize=mode, device="cpu", threads=args.threads)
        )
        runners[mode].load()
        runners[mode].warmup()
    options = GenerationOptions(num_beams=1, max_new_tokens=32)
    outputs = {mode: [] for mode in runners}
    seconds = dict.fromkeys(runners, 0.0)
    for pair in ("en-de", "en-ru"):
        for text in SENTENCES:
            for mode, runner in runners.items():
                [[translation]], took = timed(runner.translate, pair, [text], options)
                seconds[mode] += took
                outputs[mode].append(translation)
    agree = np.mean([a == b for a, b in zip(outputs["none"], outputs["int8"], strict=True)])
    return {
        "set": f"tiny FSMT, {len(outputs['none'])} texts, greedy",
        "seconds": seconds,
        "fidelity": f"translations identical {100 * agree:.1f} %",
        "holds": agree >= 0.95,
    }


def bench_tts(args) -> dict:
    from services.tts.runner import SpeechRunner
    from services.tts.settings import TTSSettings

    runners = {}
    for mode in ("none", "int8"):
        runners[mode] = SpeechRunner(TTSSettings(quantize=mode, device="cpu", threads=args.threads))
        runners[mode].load()
        runners[mode].warmup()
    features = runners["none"].vc_features
    speaker = runners["none"].voices.get(None)
    seconds = dict.fromkeys(runners, 0.0)
    distances, scales = [], []
    for text in SENTENCES:
        mels = {}
        for mode, runner in runners.items():
            ids = runner.sentences(text)[0].token_ids
            torch.manual_seed(0)  # the same prenet dropout masks for both
            [wave], took = timed(runner.synthesize, [ids], [speaker], [1.0])
            seconds[mode] += took
            mels[mode] = features(audio_target=wave, sampling_rate=features.sampling_rate)["input_values"][0]
        frames = min(len(mels["none"]), len(mels["int8"]))
        reference, quantized = np.asarray(mels["none"][:frames]), np.asarray(mels["int8"][:frames])
        distances.append(float(np.abs(reference - quantized).mean()))
        scales.append(float(np.abs(reference).mean()))
    return {
        "set": f"tiny SpeechT5, {len(SENTENCES)} sentences",
        "seconds": seconds,
        "fidelity": f"log-mel |diff| {np.mean(distances):.3f} (|log-mel| {np.mean(scales):.2f})",
        "holds": None,  # no transcript to score: see the note on the tiny model in the docstring
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", default="asr,translation,tts")
    parser.add_argument("--clips", type=int, default=12, help="held-out English clips for asr (30 at most)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--encoder-dtype",
        action="store_true",
        help="instead: ASR's encoder in bfloat16 against float32 on every clip (ASR_ENCODER_DTYPE)",
    )
    args = parser.parse_args()
    if args.encoder_dtype:
        bench_encoder_dtype(args)
        return
    for key, value in read_env_file(REPO / "env" / "tiny.env").items():
        os.environ.setdefault(key, value)
    os.chdir(REPO)  # env/tiny.env's model paths are relative to the checkout
    benches = {"asr": bench_asr, "translation": bench_translation, "tts": bench_tts}
    rows = [(name, benches[name](args)) for name in args.services.split(",")]
    print(f"\nint8 against float32 on CPU ({args.threads} threads); load average {os.getloadavg()[0]:.2f}")
    print("| service | eval set | float32 s | int8 s | speed-up | fidelity | bar holds |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows:
        if row:
            fp32, int8 = row["seconds"]["none"], row["seconds"]["int8"]
            holds = {True: "yes", False: "no", None: "n/a"}[row["holds"]]
            print(
                f"| {name} | {row['set']} | {fp32:.2f} | {int8:.2f} | {fp32 / int8:.2f}x | {row['fidelity']} "
                f"| {holds} |"
            )


if __name__ == "__main__":
    main()
