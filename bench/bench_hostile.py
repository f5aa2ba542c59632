"""Hostile requests against the whole platform: what each attack gets back, how long, and what it costs.

    python bench/bench_hostile.py [--repo PATH] [--label NAME] [--cap-s 120] [--memory-cap-mb 6000] [--out FILE]
                                  [--asr-seconds 600] [--only TEXT]

Starts the platform of the checkout at --repo (`python -m services` with its env/tiny.env, free ports, the ViT
server as its child), sends one attack at a time and prints a markdown table: the answer (HTTP status or gRPC
code), seconds, and the growth of peak memory (VmHWM, reset before each attack, summed over the server's
process tree). An attack still unanswered after --cap-s is reported as 'timeout'; a server whose memory grows
past --memory-cap-mb is killed (so that the machine survives) and reported as such; after either, or a
crash, the platform is restarted for the next attack. Pointing --repo at a git worktree of an older commit
gives the 'before' column.

The last row times how long a model thread stays busy for a client that has gone: a long clip (10 minutes
by default; the tiny Whisper transcribes 120 s in about 2 s) is sent to ASR, the connection is closed once
the model is surely on it (a quarter of the clip's full time, at least 1 s), and a tiny transcription is
timed; its usual latency is subtracted (that row's seconds).
"""


import argparse
import importlib
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
from hostile_platform import (
    DEFAULT_REPO,
    MemoryWatch,
    Platform,
    audio_upload,
    http_post,
    png_claiming,
    speech_like,
)


def vit_huge_string_tensor(platform: Platform, cap: float) -> tuple[str, str]:
    # Imported in main() already (importing TensorFlow takes seconds that are not the server's).
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    metadata = httpx.get(platform.vit_rest_url + "/v1/models/hf-vit/metadata", timeout=30).json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hf-vit"
    request.inputs[next(iter(signature["inputs"]))].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=50_000_000)]),
            string_val=[b"x"],
        )
    )
    with grpc.insecure_channel(platform.vit_grpc_target) as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=cap)
            return "OK", "predicted"
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "timeout", f"no answer within {cap:g} s"
            return error.code().name, error.details() or ""


def vit_deep_json(platform: Platform, cap: float) -> tuple[str, str]:
    body = b'{"instances":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    return http_post(platform.vit_rest_url + "/v1/models/hf-vit:predict", cap, content=body,
                     headers={"content-type": "application/json"})


def translation_wide_json(platform: Platform, cap: float) -> tuple[str, str]:
    body = b'{"text":[' + b",".join([b"0"] * 10_000_000) + b'],"source_lang":"en","target_lang":"de"}'
    return http_post(platform.rest_url + "/v1/translate", cap, content=body, headers={"content-type": "application/json"})


def translation_beams(platform: Platform, cap: float) -> tuple[str, str]:
    body = {
        "text": [f"Sentence number {i} talks about the weather, the trains and the long way home." for i in range(32)],
        "source_lang": "en", "target_lang": "de", "num_beams": 8, "num_return_sequences": 8, "max_new_tokens": 512,
    }
    return http_post(platform.rest_url + "/v1/translate", cap, json=body)


def imagegen_huge_png(platform: Platform, cap: float) -> tuple[str, str]:
    files = {"image": ("attack.png", png_claiming(60000, 60000), "image/png")}
    return http_post(platform.rest_url + "/v1/images/edits", cap, data={"prompt": "a cat"}, files=files)


def transcribe(platform: Platform, audio: bytes, cap: float) -> httpx.Response:
    return httpx.post(platform.rest_url + "/v1/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")},
                      timeout=cap)


def asr_disconnect(seconds_of_audio: float) -> Callable[[Platform, float], tuple[str, str, float]]:
    """Seconds from dropping a long transcription to the model answering others (the usual latency taken off)."""

    def attack(platform: Platform, cap: float) -> tuple[str, str, float]:
        tiny, long = speech_like(1.0), speech_like(seconds_of_audio)
        transcribe(platform, tiny, cap)
        latencies = []
        for _ in range(3):
            started = time.perf_counter()
            transcribe(platform, tiny, cap).raise_for_status()
            latencies.append(time.perf_counter() - started)
        usual = float(np.median(latencies))

        started = time.perf_counter()
        full = transcribe(platform, long, cap)
        full_s = time.perf_counter() - started

        request = httpx.Request("POST", platform.rest_url + "/v1/audio/transcriptions",
                                files={"file": ("long.wav", long, "audio/wav")})
        head = f"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: {request.url.netloc.decode()}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host") + "\r\n"
        with socket.create_connection((request.url.host, request.url.port)) as connection:
            connection.sendall(head.encode("latin-1") + request.read())
            # Not before the model has it: a request whose client left while queued is dropped anyway.
            time.sleep(drop_after := max(1.0, full_s / 4))
        started = time.perf_counter()
        try:
            answer = transcribe(platform, tiny, cap)
        except httpx.TimeoutException:
            return "timeout", f"tiny request unanswered after {cap:g} s"
        # Timing noise can put the tiny request under its usual latency: that is "free at once".
        freed = max(0.0, time.perf_counter() - started - usual)
        detail = (f"client left after {drop_after:.1f} s; model free {freed:.1f} s later; a tiny request usually "
                  f"takes {usual:.2f} s; the whole {seconds_of_audio:g} s clip takes {full_s:.1f} s ({full.status_code})")
        return f"{answer.status_code} (freed after {freed:.1f} s)", detail, freed

    return attack


ATTACKS: list[tuple[str, Callable[[Platform, float], tuple]]] = [
    ("WAV claiming 5,000,011 Hz -> POST /v1/audio/transcriptions", audio_upload("/v1/audio/transcriptions", 5_000_011)),
    ("WAV claiming 5,000,011 Hz -> POST /v1/audio/conversions", audio_upload("/v1/audio/conversions", 5_000_011)),
    ("WAV claiming 655,347 Hz -> POST /v1/audio/conversions", audio_upload("/v1/audio/conversions", 655_347)),
    ("TF Serving gRPC Predict: string tensor of shape [50000000], one value (ViT :8500)", vit_huge_string_tensor),
    ("JSON nested 200,000 deep -> ViT REST :predict (:8501)", vit_deep_json),
    ("JSON of 10,000,000 numbers (20 MB) -> POST /v1/translate", translation_wide_json),
    ("translation: 32 texts x 8 beams x 8 returns x 512 new tokens", translation_beams),
    ("PNG claiming 60000x60000 -> POST /v1/images/edits", imagegen_huge_png),
]


@dataclass
class Outcome:
    attack: str
    answer: str
    seconds: float
    growth_mb: float
    alive: str
    detail: str


def gathered_attacks() -> list[tuple[str, Callable[[Platform, float], tuple]]]:
    """This file's attacks, then each `bench/hostile_*.py` module's ATTACKS (one module per area of defence)."""
    attacks = list(ATTACKS)
    for path in sorted(Path(__file__).parent.glob("hostile_*.py")):
        module = importlib.import_module(path.stem)
        attacks += getattr(module, "ATTACKS", [])
    return attacks


def run_attack(platform: Platform, name: str, attack, cap: float, memory_cap_mb: float) -> Outcome:
    print(f"... {name}", file=sys.stderr)
    baseline = platform.reset_peaks()
    started = time.perf_counter()
    with MemoryWatch(platform, baseline, memory_cap_mb) as watch:
        try:
            answer, detail, *measured = attack(platform, cap)
        except Exception as exc:  # a dead server or a refused connection is a result too
            answer, detail, measured = "client error", f"{type(exc).__name__}: {exc}", []
    seconds = measured[0] if measured else time.perf_counter() - started
    growth = platform.growth_mb(baseline)
    if watch.killed_at_mb is not None:
        answer, detail, growth = "killed", f"server killed past {watch.killed_at_mb:.0f} MB of growth", watch.killed_at_mb
    alive = platform.alive()
    return Outcome(name, answer, seconds, growth, "answers" if alive else "down", detail.replace("|", "/")[:200])


def table(label: str, repo: Path, outcomes: list[Outcome], cap: float) -> str:
    lines = [
        f"### Hostile requests: {label}",
        "",
        f"Checkout `{repo}`; tiny models; each attack capped at {cap:g} s; memory is the growth of peak RSS "
        "(VmHWM) summed over the server's processes.",
        "",
        "| attack | answer | seconds | peak memory growth (MB) | server after | detail |",
        "|---|---|---:|---:|---|---|",
    ]
    lines += [
        f"| {o.attack} | {o.answer} | {o.seconds:.2f} | {o.growth_mb:.0f} | {o.alive} | {o.detail} |" for o in outcomes
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="checkout whose platform is attacked")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the project's dependencies")
    parser.add_argument("--cap-s", type=float, default=120.0, help="seconds before an attack counts as 'timeout'")
    parser.add_argument("--memory-cap-mb", type=float, default=6000.0, help="growth at which the server is killed")
    # The tiny Whisper transcribes 120 s in about 2 s; 600 s at 16 kHz is 19 MB, under the 25 MB upload limit.
    parser.add_argument("--asr-seconds", type=float, default=600.0, help="length of the clip the client drops")
    parser.add_argument("--only", action="append", help="run only the attacks whose name contains this")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()

    repo = args.repo.resolve()
    import tensorflow_serving.apis.prediction_service_pb2_grpc  # noqa: F401 - see vit_huge_string_tensor
    attacks = [*gathered_attacks(), (f"ASR: client drops a {args.asr_seconds:g} s clip mid-transcription; seconds until the "
                          "model answers a tiny request", asr_disconnect(args.asr_seconds))]
    if args.only:
        attacks = [(name, attack) for name, attack in attacks if any(part in name for part in args.only)]
    platform = Platform(repo, args.python)
    outcomes = []
    try:
        platform.start()
        for name, attack in attacks:
            outcome = run_attack(platform, name, attack, args.cap_s, args.memory_cap_mb)
            outcomes.append(outcome)
            print(f"    {outcome.answer} in {outcome.seconds:.1f} s, +{outcome.growth_mb:.0f} MB", file=sys.stderr)
            if outcome.alive != "answers" or outcome.answer in ("timeout", "killed"):
                platform.stop()
                platform.kill()
                platform.start()
    finally:
        platform.stop()
    report = table(args.label, repo, outcomes, args.cap_s)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
