"""The requests the check sends each service, one at a time and then all at once, over REST and gRPC: how
long they took and whether the answers agree."""

import base64
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import soundfile as sf
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from protos import (
    asr_pb2,
    asr_pb2_grpc,
    imagegen_pb2,
    imagegen_pb2_grpc,
    translation_pb2,
    translation_pb2_grpc,
    tts_pb2,
    tts_pb2_grpc,
)
from tools.tiny_models.common import words

from .report import Exactness, ServiceReport, Throughput
from .servers import ServiceProcess

REQUEST_TIMEOUT_S = 900  # seconds, client and server side alike
SAMPLE_RATE = 16000
# Batched and unbatched diffusion run different kernels; in float16 a pixel may move by a level or a few.
IMAGE_MEAN_TOLERANCE = 1.0  # mean |difference| in 8-bit levels
IMAGE_OUTLIER_LEVELS, IMAGE_OUTLIER_SHARE = 8, 0.01  # at most 1% of values off by more than 8 levels


@dataclass(frozen=True)
class Workload:
    """How much each service is asked to do."""

    texts: int  # translation requests, one sentence each
    text_words: int
    translation_tokens: int
    clips: int  # ASR requests
    clip_seconds: float
    speeches: int  # TTS requests, one sentence each
    speech_words: int
    images: int  # imagegen requests, one image each
    image_steps: int


TINY_WORKLOAD = Workload(texts=6, text_words=8, translation_tokens=16, clips=3, clip_seconds=3.0, speeches=3,
                         speech_words=5, images=3, image_steps=2)
REAL_WORKLOAD = Workload(texts=32, text_words=12, translation_tokens=64, clips=8, clip_seconds=10.0, speeches=8,
                         speech_words=10, images=4, image_steps=20)


# -- timing and metrics ----------------------------------------------------------------------------------------


def one_at_a_time(calls: list[Callable]) -> tuple[list, float]:
    started = time.perf_counter()
    results = [call() for call in calls]
    return results, time.perf_counter() - started


def all_at_once(calls: list[Callable]) -> tuple[list, float]:
    """Every call from its own thread, released together; results in order and the wall time."""
    barrier = threading.Barrier(len(calls) + 1)

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        barrier.wait()
        started = time.perf_counter()
        results = [future.result() for future in futures]
    return results, time.perf_counter() - started


def metric(server: ServiceProcess, name: str, **labels: str) -> float:
    """A sample's value from the server's /metrics (0 when absent)."""
    text = ok(httpx.get(f"{server.rest_url}/metrics", timeout=30)).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def measured(server: ServiceProcess, batcher: str, calls: list[Callable], at_once: bool) -> tuple[list, float, float]:
    """Results, wall seconds and the mean number of requests per model call of `batcher` meanwhile."""

    def counts() -> tuple[float, float]:
        return (
            metric(server, "serving_batch_size_count", batcher=batcher),
            metric(server, "serving_batch_size_sum", batcher=batcher),
        )

    calls_before, requests_before = counts()
    results, seconds = (all_at_once if at_once else one_at_a_time)(calls)
    calls_after, requests_after = counts()
    model_calls = calls_after - calls_before
    return results, seconds, (requests_after - requests_before) / model_calls if model_calls else 0.0


def ok(response: httpx.Response) -> httpx.Response:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                           f"{response.text[:300]}")
    return response


def batched(check: Exactness, requests_per_call: float) -> Exactness:
    """The check, saying how many requests shared a model call: all at once, the first runs alone and the rest
    queue behind it and share calls."""
    check.detail = "; ".join(filter(None, [f"{requests_per_call:.1f} requests per model call", check.detail]))
    return check


def agreement(check: str, got: list, expected: list) -> Exactness:
    matched = sum(a == b for a, b in zip(got, expected, strict=True))
    detail = ""
    if matched < len(expected):
        i = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        shared = next((k for k, (x, y) in enumerate(zip(got[i], expected[i], strict=False)) if x != y),
                      min(len(got[i]), len(expected[i])))
        detail = f"first difference: request {i}, after {shared} of {len(expected[i])} characters"
    return Exactness(check, matched, len(expected), detail)


# -- inputs ----------------------------------------------------------------------------------------------------


def sentences(count: int, length: int, lang: str = "en") -> list[str]:
    """Distinct, deterministic sentences of common words."""
    vocabulary = words(lang)
    return [
        " ".join(vocabulary[(7 * i + 3 * j) % len(vocabulary)] for j in range(length)).capitalize() + "."
        for i in range(count)
    ]


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """A voiced-sounding clip (harmonics under a syllable-rate envelope, a little noise), different per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(0.4 / k * np.sin(k * phase) for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 2 * np.pi))
    return (0.6 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="WAV")
    return buffer.getvalue()


def audio_seconds(data: bytes) -> float:
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    return samples.shape[0] / rate


def pcm(data: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(data), dtype="int16")[0]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def image_agreement(check: str, got: list[np.ndarray], expected: list[np.ndarray]) -> Exactness:
    within, worst_mean, worst_max = 0, 0.0, 0
    for a, b in zip(got, expected, strict=True):
        difference = np.abs(a - b)
        mean, outliers = float(difference.mean()), float((difference > IMAGE_OUTLIER_LEVELS).mean())
        within += mean <= IMAGE_MEAN_TOLERANCE and outliers <= IMAGE_OUTLIER_SHARE
        worst_mean, worst_max = max(worst_mean, mean), max(worst_max, int(difference.max()))
    detail = (
        f"worst image: mean |diff| {worst_mean:.3f}, max |diff| {worst_max} levels (tolerance: mean <= "
        f"{IMAGE_MEAN_TOLERANCE}, <= {IMAGE_OUTLIER_SHARE:.0%} of values off by > {IMAGE_OUTLIER_LEVELS})"
    )
    return Exactness(check, within, len(expected), detail)


# -- services --------------------------------------------------------------------------------------------------


def probe_translation(server: ServiceProcess, work: Workload, report: ServiceReport) -> None:
    url = server.rest_url
    pair = next(m for m in ok(httpx.get(f"{url}/v1/models", timeout=30)).json()["data"]
                if m.get("service") == "translation")
    source, target = pair["source_lang"], pair["target_lang"]
    texts = sentences(work.texts, work.text_words)
    options = dict(source_lang=source, target_lang=target, num_beams=1, max_new_tokens=work.translation_tokens)

    def call(text: str) -> Callable[[], str]:
        return lambda: ok(
            httpx.post(f"{url}/v1/translate", json={"text": text, **options}, timeout=REQUEST_TIMEOUT_S)
        ).json()["translations"][0]

    batcher = "translation.translate"
    label = f"{source}-{target}, {work.text_words} words, greedy, <= {work.translation_tokens} tokens"
    alone, alone_s, alone_batch = measured(server, batcher, [call(t) for t in texts], at_once=False)
    report.rest = "ok"
    together, together_s, together_batch = measured(server, batcher, [call(t) for t in texts], at_once=True)
    report.throughput += [
        Throughput(label, "one at a time", len(texts), alone_s, mean_batch_size=alone_batch),
        Throughput(label, "all at once", len(texts), together_s, mean_batch_size=together_batch),
    ]
    report.exactness.append(batched(
        agreement("all at once (batched) == one at a time: greedy translations", together, alone), together_batch
    ))

    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = translation_pb2_grpc.TranslationStub(channel).Translate(
            translation_pb2.TranslateRequest(text=[texts[0]], **options), timeout=REQUEST_TIMEOUT_S
        )
    report.grpc = "ok"
    report.exactness.append(agreement("gRPC Translate == REST", [reply.translations[0]], [alone[0]]))


def probe_asr(server: ServiceProcess, work: Workload, report: ServiceReport) -> None:
    url = server.rest_url
    clips = [wav_bytes(speech_like(work.clip_seconds, seed)) for seed in range(work.clips)]
    audio = work.clips * work.clip_seconds

    def call(clip: bytes, decoding: str) -> Callable[[], dict]:
        return lambda: ok(httpx.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("clip.wav", clip, "audio/wav")},
            data={"language": "en", "decoding": decoding, "response_format": "json"},
            timeout=REQUEST_TIMEOUT_S,
        )).json()

    batcher = "asr.transcribe"
    label = f"{work.clip_seconds:g} s clips, en"
    drafted_before = metric(server, "asr_draft_tokens_total")
    accepted_before = metric(server, "asr_draft_tokens_accepted_total")
    assisted, assisted_s, assisted_batch = measured(server, batcher, [call(c, "assisted") for c in clips], False)
    drafted = metric(server, "asr_draft_tokens_total") - drafted_before
    accepted = metric(server, "asr_draft_tokens_accepted_total") - accepted_before
    report.rest = "ok"
    plain, plain_s, plain_batch = measured(server, batcher, [call(c, "plain") for c in clips], at_once=False)
    together, together_s, together_batch = measured(server, batcher, [call(c, "plain") for c in clips], at_once=True)
    report.throughput += [
        Throughput(f"{label}, assisted", "one at a time", work.clips, assisted_s, "audio s", audio, assisted_batch),
        Throughput(f"{label}, plain", "one at a time", work.clips, plain_s, "audio s", audio, plain_batch),
        Throughput(f"{label}, plain", "all at once", work.clips, together_s, "audio s", audio, together_batch),
    ]
    acceptance = f"{accepted / drafted:.0%} of {drafted:.0f} drafted tokens accepted" if drafted else "nothing drafted"
    matched = agreement("assisted == plain decoding (one at a time)",
                        [r["text"] for r in assisted], [r["text"] for r in plain])
    matched.detail = "; ".join(filter(None, [acceptance, matched.detail]))
    report.exactness += [
        matched,
        batched(agreement("all at once (batched) == one at a time: plain decoding",
                          [r["text"] for r in together], [r["text"] for r in plain]), together_batch),
    ]

    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = asr_pb2_grpc.SpeechRecognitionStub(channel).Transcribe(
            asr_pb2.TranscribeRequest(
                audio=clips[0], filename="clip.wav",
                options=asr_pb2.TranscribeOptions(language="en", decoding="plain"),
            ),
            timeout=REQUEST_TIMEOUT_S,
        )
    report.grpc = "ok"
    report.exactness.append(agreement("gRPC Transcribe == REST (plain)", [reply.text], [plain[0]["text"]]))


def probe_tts(server: ServiceProcess, work: Workload, report: ServiceReport) -> None:
    url = server.rest_url
    voice = ok(httpx.get(f"{url}/v1/voices", timeout=30)).json()["data"][0]["id"]
    texts = sentences(work.speeches, work.speech_words)

    def call(text: str, **extra) -> Callable[[], bytes]:
        body = {"input": text, "voice": voice, "response_format": "wav", **extra}
        return lambda: ok(httpx.post(f"{url}/v1/audio/speech", json=body, timeout=REQUEST_TIMEOUT_S)).content

    batcher = "tts.speech"
    label = f"one sentence of {work.speech_words} words, wav"
    alone, alone_s, alone_batch = measured(server, batcher, [call(t) for t in texts], at_once=False)
    report.rest = "ok"
    together, together_s, together_batch = measured(server, batcher, [call(t) for t in texts], at_once=True)
    report.throughput += [
        Throughput(label, "one at a time", len(texts), alone_s, "audio s",
                   sum(map(audio_seconds, alone)), alone_batch),
        Throughput(label, "all at once", len(texts), together_s, "audio s",
                   sum(map(audio_seconds, together)), together_batch),
    ]
    # SpeechT5 keeps dropout on at inference, so only seeded requests (which run alone) are reproducible.
    # Samples are compared, not bytes: a WAV header may or may not carry the length (streamed responses do not).
    first, second = (pcm(call(texts[0], seed=7)()) for _ in range(2))
    report.exactness.append(Exactness("same seed twice: identical samples", int(np.array_equal(first, second)), 1))

    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(
            tts_pb2.SynthesizeRequest(input=texts[0], voice=voice, response_format="wav", seed=7),
            timeout=REQUEST_TIMEOUT_S,
        )
    report.grpc = "ok"
    report.exactness.append(Exactness("gRPC Synthesize == REST (same seed): identical samples",
                                      int(np.array_equal(pcm(reply.audio), first)), 1))


def probe_imagegen(server: ServiceProcess, work: Workload, report: ServiceReport) -> None:
    url = server.rest_url
    prompts = [f"{sentence[:-1]}, oil painting" for sentence in sentences(work.images, 6)]
    steps = work.image_steps
    size = ""

    def call(prompt: str, seed: int) -> Callable[[], np.ndarray]:
        def generate() -> np.ndarray:
            nonlocal size
            body = {"prompt": prompt, "seed": seed, "steps": steps, "n": 1, "response_format": "b64_json"}
            reply = ok(httpx.post(f"{url}/v1/images/generations", json=body, timeout=REQUEST_TIMEOUT_S)).json()
            size = reply["size"]
            return pixels(base64.b64decode(reply["data"][0]["b64_json"]))

        return generate

    batcher = "imagegen.generate"
    calls = [call(p, seed) for seed, p in enumerate(prompts)]
    alone, alone_s, alone_batch = measured(server, batcher, calls, at_once=False)
    report.rest = "ok"
    together, together_s, together_batch = measured(server, batcher, calls, at_once=True)
    label = f"{size}, {steps} steps, default scheduler"
    report.throughput += [
        Throughput(label, "one at a time", len(calls), alone_s, "images", len(calls), alone_batch),
        Throughput(label, "all at once", len(calls), together_s, "images", len(calls), together_batch),
    ]
    report.exactness.append(batched(
        image_agreement("all at once (batched) == one at a time: pixels", together, alone), together_batch
    ))

    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = imagegen_pb2_grpc.ImageGenerationStub(channel).Generate(
            imagegen_pb2.GenerateRequest(prompt=prompts[0], seed=0, steps=steps, output_format="png"),
            timeout=REQUEST_TIMEOUT_S,
        )
    report.grpc = "ok"
    report.exactness.append(image_agreement("gRPC Generate == REST: pixels", [pixels(reply.images[0].data)], [alone[0]]))


PROBES = {"translation": probe_translation, "asr": probe_asr, "tts": probe_tts, "imagegen": probe_imagegen}
