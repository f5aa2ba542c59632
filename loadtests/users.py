"""Locust users per service and protocol; class weights make the mixed-traffic scenario.

REST users are Locust `HttpUser`s (requests, multipart uploads, streamed bodies); gRPC users call
through the SDK's gRPC clients. Every answer is checked (status, shape, decodable content), so a
200 with a broken body still counts as a failure. Request names start with the service name.
"""

from locust import HttpUser, between, task

from .common import Check, GrpcUser, name, payloads

# Relative traffic in the mixed scenario: cheap, frequent calls (translation, classification) more
# often than expensive ones (image generation).
WEIGHTS = {"translation": 4, "asr": 2, "tts": 2, "imagegen": 1, "vit": 4}
WAIT = between(0.1, 1.0)


class RestUser(HttpUser):
    abstract = True
    service = ""
    wait_time = WAIT

    def on_start(self) -> None:
        self.payloads = payloads(self.environment)

    def post_json(self, path: str, body: dict, check, operation: str | None = None):
        """POST JSON; `check(response)` raises `Check` (or KeyError/ValueError) when the answer is wrong."""
        with self.client.post(
            path, json=body, name=name(self.service, operation or f"POST {path}"), catch_response=True
        ) as response:
            _judge(response, check)

    def get_json(self, path: str, operation: str | None = None) -> dict | None:
        with self.client.get(
            path, name=name(self.service, operation or f"GET {path}"), catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return None
            return r.json()


def _judge(response, check) -> None:
    if response.status_code != 200:
        response.failure(f"{response.status_code}: {response.text[:300]}")
        return
    try:
        check(response)
    except (Check, KeyError, ValueError, TypeError) as exc:
        response.failure(f"bad answer: {type(exc).__name__}: {exc}")


def token_limit(payloads) -> dict:
    limit = payloads.profile.max_new_tokens
    return {"max_new_tokens": limit} if limit else {}


def _models_of(body: dict | None, service: str) -> list[dict]:
    return [m for m in (body or {}).get("data", []) if m.get("service") == service]


# -- translation ----------------------------------------------------------------------------------


class TranslationRestUser(RestUser):
    service = "translation"
    weight = WEIGHTS["translation"]

    def on_start(self) -> None:
        super().on_start()
        models = _models_of(self.get_json("/v1/models", "GET /v1/models"), "translation")
        self.pairs = [(m["source_lang"], m["target_lang"]) for m in models] or [("en", "de")]

    @task(4)
    def translate(self) -> None:
        source, target = self.payloads.rng.choice(self.pairs)
        texts = self.payloads.texts(source if source in ("en", "de", "ru") else "en")
        body = {"text": texts, "source_lang": source, "target_lang": target, **token_limit(self.payloads)}

        def check(response):
            if len(response.json()["translations"]) != len(texts):
                raise Check("one translation per text expected")

        self.post_json("/v1/translate", body, check)

    @task(1)
    def translate_with_beams(self) -> None:
        source, target = self.payloads.rng.choice(self.pairs)
        body = {
            "text": self.payloads.text(source if source in ("en", "de", "ru") else "en"),
            "source_lang": source,
            "target_lang": target,
            "num_beams": 4,
            "num_return_sequences": 2,
            **token_limit(self.payloads),
        }

        def check(response):
            if len(response.json()["alternatives"][0]) != 2:
                raise Check("two alternatives expected")

        self.post_json("/v1/translate", body, check, "POST /v1/translate (beam search)")


class TranslationGrpcUser(GrpcUser):
    service = "translation"
    weight = WEIGHTS["translation"]
    wait_time = WAIT

    def on_start(self) -> None:
        super().on_start()
        with self.measure("ListModels"):
            self.pairs = [(m.source_lang, m.target_lang) for m in self.grpc.translation.models()]
        self.pairs = getattr(self, "pairs", None) or [("en", "de")]

    @task
    def translate(self) -> None:
        source, target = self.payloads.rng.choice(self.pairs)
        texts = self.payloads.texts(source if source in ("en", "de", "ru") else "en")
        with self.measure("Translate") as record:
            result = self.grpc.translation.translate(
                texts, source_lang=source, target_lang=target, **token_limit(self.payloads)
            )
            if len(result.translations) != len(texts):
                raise Check("one translation per text expected")
            record["length"] = sum(len(t) for t in result.translations)
