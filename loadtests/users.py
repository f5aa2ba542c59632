"""Locust users per service and protocol; class weights make the mixed-traffic scenario.

REST users are Locust `HttpUser`s (requests: JSON, multipart uploads, streamed bodies); gRPC users
call through the SDK's gRPC clients. Every answer is checked (status, shape, decodable content),
so a 200 with a broken body still counts as a failure. Request names start with the service name,
and class names follow `<Service><Protocol>User` (loadtests/run.py picks them by that name).
"""

import base64
import io
import json
import time

import requests
import soundfile as sf
from locust import HttpUser, between, events, task
from PIL import Image

from clients.auth import bearer

from .common import Check, GrpcUser, api_key, name, payloads, vit_url
from .scenario import WEIGHTS

WAIT = between(0.1, 1.0)
AUDIO_FORMATS = ("wav", "flac", "pcm")  # what every libsndfile build writes


class RestUser(HttpUser):
    abstract = True
    service = ""
    wait_time = WAIT

    def on_start(self) -> None:
        self.payloads = payloads(self.environment)
        if key := api_key(self.environment):
            self.client.headers["Authorization"] = bearer(key)

    def post(self, path: str, check, operation: str | None = None, *, stream: str | None = None, **request):
        """POST and judge the answer: `check(body_bytes, response)` raises `Check` (or KeyError/ValueError).

        `stream="first"` reports the time until the response started (the TTS stream answers once
        its first sentence is ready: time to first audio); `stream="whole"` the time until the last
        byte (server-sent events). Either way the whole body is read and checked.
        """
        label = name(self.service, operation or f"POST {path}")
        started = time.perf_counter()
        with self.client.post(
            path, name=label, catch_response=True, stream=bool(stream), **request
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:300]}")
                return
            try:
                body = b"".join(response.iter_content(chunk_size=None)) if stream else response.content
            except requests.RequestException as exc:  # the stream broke off
                response.failure(f"body interrupted: {exc}")
                return
            if stream == "whole":
                response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            response.request_meta["response_length"] = len(body)
            try:
                check(body, response)
            except (Check, KeyError, ValueError, TypeError, OSError, sf.LibsndfileError) as exc:
                response.failure(f"bad answer: {type(exc).__name__}: {exc}")

    def get_json(self, path: str, operation: str | None = None) -> dict | None:
        with self.client.get(
            path, name=name(self.service, operation or f"GET {path}"), catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return None
            return r.json()


def token_limit(payloads) -> dict:
    limit = payloads.profile.max_new_tokens
    return {"max_new_tokens": limit} if limit else {}


def check_audio(data: bytes, fmt: str) -> None:
    if fmt == "pcm":
        if not data or len(data) % 2:
            raise Check(f"{len(data)} bytes is not 16-bit PCM")
        return
    if sf.info(io.BytesIO(data)).frames <= 0:
        raise Check("audio without samples")


def check_image(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.verify()


def sse_events(body: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            events.append((lines.get("event", "message"), json.loads(lines["data"])))
    return events


# -- translation ----------------------------------------------------------------------------------


def _pair_lang(pair: tuple[str, str]) -> str:
    return pair[0] if pair[0] in ("en", "de", "ru") else "en"


class TranslationRestUser(RestUser):
    service = "translation"
    weight = WEIGHTS["translation"]

    def on_start(self) -> None:
        super().on_start()
        listing = self.get_json("/v1/models", "GET /v1/models") or {}
        models = [m for m in listing.get("data", []) if m.get("service") == "translation"]
        self.pairs = [(m["source_lang"], m["target_lang"]) for m in models] or [("en", "de")]

    @task(4)
    def translate(self) -> None:
        pair = self.payloads.rng.choice(self.pairs)
        texts = self.payloads.texts(_pair_lang(pair))
        body = {"text": texts, "source_lang": pair[0], "target_lang": pair[1], **token_limit(self.payloads)}

        def check(_, response):
            if len(response.json()["translations"]) != len(texts):
                raise Check("one translation per text expected")

        self.post("/v1/translate", check, json=body)

    @task(1)
    def translate_with_beams(self) -> None:
        pair = self.payloads.rng.choice(self.pairs)
        body = {
            "text": self.payloads.text(_pair_lang(pair)),
            "source_lang": pair[0],
            "target_lang": pair[1],
            "num_beams": 4,
            "num_return_sequences": 2,
            **token_limit(self.payloads),
        }

        def check(_, response):
            if len(response.json()["alternatives"][0]) != 2:
                raise Check("two alternatives expected")

        self.post("/v1/translate", check, "POST /v1/translate (beam search)", json=body)


class TranslationGrpcUser(GrpcUser):
    service = "translation"
    weight = WEIGHTS["translation"]
    wait_time = WAIT

    def on_start(self) -> None:
        super().on_start()
        self.pairs = [("en", "de")]
        with self.measure("ListModels"):
            self.pairs = [
                (m.source_lang, m.target_lang) for m in self.grpc.translation.models()
            ] or self.pairs

    @task
    def translate(self) -> None:
        pair = self.payloads.rng.choice(self.pairs)
        texts = self.payloads.texts(_pair_lang(pair))
        with self.measure("Translate") as record:
            result = self.grpc.translation.translate(
                texts, source_lang=pair[0], target_lang=pair[1], **token_limit(self.payloads)
            )
            if len(result.translations) != len(texts):
                raise Check("one translation per text expected")
            record["length"] = sum(len(t) for t in result.translations)


# -- speech recognition --------------------------------------------------------------------------


class ASRRestUser(RestUser):
    service = "asr"
    weight = WEIGHTS["asr"]

    @staticmethod
    def check_transcript(_, response) -> None:
        body = response.json()
        if not isinstance(body["text"], str) or body.get("decoding") not in (None, "assisted", "plain"):
            raise Check("a transcript with its decoding path expected")

    @task(3)
    def transcribe(self) -> None:
        audio, filename = self.payloads.audio()
        form = {"response_format": self.payloads.rng.choice(("json", "json", "verbose_json"))}
        self.post(
            "/v1/audio/transcriptions", self.check_transcript, files={"file": (filename, audio)}, data=form
        )

    @task(1)
    def translate(self) -> None:
        audio, filename = self.payloads.audio()
        self.post(
            "/v1/audio/translations",
            self.check_transcript,
            files={"file": (filename, audio)},
            data={"response_format": "json"},
        )


class ASRGrpcUser(GrpcUser):
    service = "asr"
    weight = WEIGHTS["asr"]
    wait_time = WAIT

    @task(2)
    def transcribe(self) -> None:
        audio, filename = self.payloads.audio()
        with self.measure("Transcribe") as record:
            result = self.grpc.asr.transcribe(
                audio, task=self.payloads.rng.choice(("transcribe", "translate"))
            )
            if result.decoding not in ("assisted", "plain"):
                raise Check(f"unknown decoding path {result.decoding!r}")
            record["length"] = len(result.text)

    @task(1)
    def transcribe_stream(self) -> None:
        audio, filename = self.payloads.audio()
        with self.measure("TranscribeStream") as record:
            result = self.grpc.asr.transcribe_file_streamed(audio, chunk_bytes=16 * 1024)
            if result.duration is None or result.duration <= 0:
                raise Check("the streamed audio was not received")
            record["length"] = len(result.text)


# -- text to speech -------------------------------------------------------------------------------


class TTSRestUser(RestUser):
    service = "tts"
    weight = WEIGHTS["tts"]

    def on_start(self) -> None:
        super().on_start()
        listing = self.get_json("/v1/voices") or {}
        self.voices = [v["id"] for v in listing.get("data", [])] or [None]

    @task(3)
    def speech(self) -> None:
        fmt = self.payloads.rng.choice(AUDIO_FORMATS)
        body = {
            "input": self.payloads.speech_text(),
            "voice": self.payloads.rng.choice(self.voices),
            "response_format": fmt,
        }
        self.post("/v1/audio/speech", lambda data, _: check_audio(data, fmt), json=body)

    @task(2)
    def speech_stream(self) -> None:
        body = {
            "input": self.payloads.speech_text(),
            "voice": self.payloads.rng.choice(self.voices),
            "response_format": "pcm",
            "stream": True,
        }
        self.post(
            "/v1/audio/speech",
            lambda data, _: check_audio(data, "pcm"),
            "POST /v1/audio/speech (stream, time to first audio)",
            stream="first",
            json=body,
        )

    @task(1)
    def convert(self) -> None:
        audio, filename = self.payloads.audio()
        form = {"voice": self.payloads.rng.choice(self.voices) or "", "response_format": "wav"}
        self.post(
            "/v1/audio/conversions",
            lambda data, _: check_audio(data, "wav"),
            files={"file": (filename, audio)},
            data={k: v for k, v in form.items() if v},
        )


class TTSGrpcUser(GrpcUser):
    service = "tts"
    weight = WEIGHTS["tts"]
    wait_time = WAIT

    def on_start(self) -> None:
        super().on_start()
        self.voices = [None]
        with self.measure("ListVoices"):
            self.voices = self.grpc.tts.voices().names or self.voices

    @task(3)
    def synthesize(self) -> None:
        fmt = self.payloads.rng.choice(AUDIO_FORMATS)
        with self.measure("Synthesize") as record:
            speech = self.grpc.tts.speech(
                self.payloads.speech_text(), voice=self.payloads.rng.choice(self.voices), response_format=fmt
            )
            check_audio(speech.audio, fmt)
            record["length"] = len(speech.audio)

    @task(2)
    def synthesize_stream(self) -> None:
        with self.measure("SynthesizeStream") as record:
            chunks = list(
                self.grpc.tts.stream_speech(
                    self.payloads.speech_text(),
                    voice=self.payloads.rng.choice(self.voices),
                    response_format="pcm",
                )
            )
            audio = b"".join(c.audio for c in chunks)
            check_audio(audio, "pcm")
            record["length"] = len(audio)

    @task(1)
    def convert(self) -> None:
        audio, _ = self.payloads.audio()
        with self.measure("Convert") as record:
            speech = self.grpc.tts.convert(audio, voice=self.payloads.rng.choice(self.voices))
            check_audio(speech.audio, "wav")
            record["length"] = len(speech.audio)


# -- image generation -----------------------------------------------------------------------------


class ImageGenRestUser(RestUser):
    service = "imagegen"
    weight = WEIGHTS["imagegen"]

    @staticmethod
    def check_images(_, response) -> None:
        data = response.json()["data"]
        if not data:
            raise Check("no image")
        check_image(base64.b64decode(data[0]["b64_json"]))

    @task(3)
    def generate(self) -> None:
        body = {"prompt": self.payloads.prompt(), **self.payloads.imagegen_options()}
        self.post("/v1/images/generations", self.check_images, json=body)

    @task(1)
    def generate_stream(self) -> None:
        body = {
            "prompt": self.payloads.prompt(),
            **self.payloads.imagegen_options(),
            "stream": True,
            "stream_progress": True,
        }

        def check(data, _):
            events = sse_events(data)
            errors = [e for kind, e in events if kind == "error"]
            if errors:
                raise Check(f"error event: {errors[0]}")
            completed = [e for kind, e in events if kind.endswith(".completed")]
            if not completed or not any(kind.endswith(".progress") for kind, _ in events):
                raise Check("progress events and a completed image expected")
            check_image(base64.b64decode(completed[0]["b64_json"]))

        self.post(
            "/v1/images/generations", check, "POST /v1/images/generations (stream)", stream="whole", json=body
        )

    @task(1)
    def edit(self) -> None:
        image, fmt = self.payloads.image()
        options = self.payloads.imagegen_options()
        form = {
            "prompt": self.payloads.prompt(),
            "strength": "0.7",
            **{k: str(v) for k, v in options.items()},
        }
        self.post("/v1/images/edits", self.check_images, files={"image": (f"source.{fmt}", image)}, data=form)


class ImageGenGrpcUser(GrpcUser):
    service = "imagegen"
    weight = WEIGHTS["imagegen"]
    wait_time = WAIT

    @task(3)
    def generate(self) -> None:
        with self.measure("Generate") as record:
            result = self.grpc.images.generate(self.payloads.prompt(), **self.payloads.imagegen_options())
            check_image(result.image.data)
            record["length"] = len(result.image.data)

    @task(1)
    def generate_stream(self) -> None:
        steps = []
        with self.measure("GenerateStream") as record:
            result = self.grpc.images.generate(
                self.payloads.prompt(), on_progress=steps.append, **self.payloads.imagegen_options()
            )
            if not steps:
                raise Check("no progress events")
            check_image(result.image.data)
            record["length"] = len(result.image.data)


# -- ViT on the TensorFlow Serving protocol -------------------------------------------------------


class ViTRestUser(RestUser):
    """Posts to the ViT server (its own address: --vit-host), as TF Serving's REST API expects."""

    service = "vit"
    weight = WEIGHTS["vit"]
    model = "hf-vit"

    def __init__(self, environment):
        self.host = vit_url(environment)
        super().__init__(environment)

    @task(3)
    def predict(self) -> None:
        images = [self.payloads.image()[0] for _ in range(self.payloads.rng.choice((1, 1, 2, 4)))]
        body = {"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}

        def check(_, response):
            predictions = response.json()["predictions"]
            if len(predictions) != len(images) or not all(p["label"] for p in predictions):
                raise Check("one label per image expected")

        self.post(f"/v1/models/{self.model}:predict", check, json=body)

    @task(1)
    def top_k(self) -> None:
        body = {
            "signature_name": "top_k",
            "instances": [{"b64": base64.b64encode(self.payloads.image()[0]).decode()}],
        }

        def check(_, response):
            scores = response.json()["predictions"][0]["scores"]
            if scores != sorted(scores, reverse=True):
                raise Check("top_k scores not in order")

        self.post(
            f"/v1/models/{self.model}:predict",
            check,
            f"POST /v1/models/{self.model}:predict (top_k)",
            json=body,
        )


@events.init.add_listener
def load_tensorflow_serving_stubs(environment, **_) -> None:
    """The TF Serving stubs import TensorFlow (seconds): once, before any user starts, not mid-test."""
    if any(user.__name__ == "ViTGrpcUser" for user in environment.user_classes):
        import tensorflow_serving.apis.prediction_service_pb2_grpc  # noqa: F401


class ViTGrpcUser(GrpcUser):
    service = "vit"
    weight = WEIGHTS["vit"]
    wait_time = WAIT

    @task
    def predict(self) -> None:
        images = [self.payloads.image()[0] for _ in range(self.payloads.rng.choice((1, 1, 2, 4)))]
        with self.measure("Predict") as record:
            results = self.grpc.vit.classify_many(images)
            if len(results) != len(images):
                raise Check("one label per image expected")
            record["length"] = len(results)
