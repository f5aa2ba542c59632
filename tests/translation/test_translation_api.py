"""Translation over REST and gRPC against a real server on loopback, with the tiny FSMT models."""

import concurrent.futures

import grpc
import httpx
import pytest

from protos import translation_pb2 as pb
from protos import translation_pb2_grpc as pb_grpc
from services.kit.testing import ServerThread
from services.translation.runner import GenerationOptions
from services.translation.service import create_service
from services.translation.settings import TranslationSettings

TEXTS = ["Hello world.", "How are you today?", "The weather is nice", "Wir gehen nach Hause.", "Good night"]


@pytest.fixture(scope="module")
def server(models_dir):
    pairs = {p: str(models_dir / "translation" / f"wmt19-{p}") for p in ("en-de", "de-en", "en-ru")}
    settings = TranslationSettings(
        models=pairs, max_batch_size=8, max_wait_ms=100, wait_when_idle=True, log_level="warning", default_max_new_tokens=16
    )
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.TranslationStub(channel)


def translate(server, **body) -> httpx.Response:
    return httpx.post(server.rest_url + "/v1/translate", json=body, timeout=60)


def test_translate_one_text_and_a_list(server):
    one = translate(server, text="Hello world.", source_lang="en", target_lang="de")
    assert one.status_code == 200
    assert len(one.json()["translations"]) == 1 and one.json()["model"] == "wmt19-en-de"
    many = translate(server, text=TEXTS, source_lang="en", target_lang="de").json()
    assert len(many["translations"]) == len(TEXTS)
    assert many["translations"][0] == one.json()["translations"][0]
    assert "alternatives" not in many


def test_beam_search_controls_return_alternatives(server):
    body = translate(
        server, text=TEXTS[:2], source_lang="en", target_lang="de", num_beams=4, num_return_sequences=3,
        length_penalty=0.8, early_stopping=True, max_new_tokens=10,
    ).json()
    assert [len(a) for a in body["alternatives"]] == [3, 3]
    assert body["translations"] == [a[0] for a in body["alternatives"]]


def test_models_lists_the_pairs(server):
    data = httpx.get(server.rest_url + "/v1/models").json()["data"]
    pairs = {(m["source_lang"], m["target_lang"]) for m in data if m["service"] == "translation"}
    assert pairs == {("en", "de"), ("de", "en"), ("en", "ru")}


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"text": "", "source_lang": "en", "target_lang": "de"}, 400, "text"),
        ({"text": [], "source_lang": "en", "target_lang": "de"}, 400, "text"),
        ({"text": ["ok", "  "], "source_lang": "en", "target_lang": "de"}, 400, "text"),
        ({"text": "hi", "source_lang": "en", "target_lang": "fr"}, 404, "target_lang"),
        ({"text": "hi", "source_lang": "en", "target_lang": "de", "num_beams": 0}, 400, "num_beams"),
        ({"text": "hi", "source_lang": "en", "target_lang": "de", "num_beams": 1000}, 400, "num_beams"),
        ({"text": "hi", "source_lang": "en", "target_lang": "de", "num_beams": 2, "num_return_sequences": 3}, 400,
         "num_return_sequences"),
        ({"text": "hi", "source_lang": "en", "target_lang": "de", "max_new_tokens": 100000}, 400, "max_new_tokens"),
        ({"text": 42, "source_lang": "en", "target_lang": "de"}, 400, "text"),
        ({"text": "hi", "source_lang": ["en"], "target_lang": "de"}, 400, "source_lang"),
        ({"text": "hi", "source_lang": "en", "target_lang": "de", "temperature": 2}, 400, "temperature"),
        ({"text": "x" * 3000, "source_lang": "en", "target_lang": "de"}, 400, "text"),
    ],
)
def test_bad_input_is_refused_naming_the_field(server, body, status, field):
    response = translate(server, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert field in error["message"]
    assert translate(server, text="still serving", source_lang="en", target_lang="de").status_code == 200


def test_non_json_and_oversized_bodies(server):
    not_json = httpx.post(server.rest_url + "/v1/translate", content=b"hello",
                          headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]["message"]
    huge = httpx.post(server.rest_url + "/v1/translate", content=b"{" + b" " * (10 * 1024 * 1024) + b"}",
                      headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
    assert translate(server, text="still serving", source_lang="en", target_lang="de").status_code == 200


def test_grpc_matches_rest(server, stub):
    rest = translate(server, text=TEXTS[:2], source_lang="en", target_lang="de", num_beams=3,
                     num_return_sequences=2).json()
    reply = stub.Translate(pb.TranslateRequest(text=TEXTS[:2], source_lang="en", target_lang="de", num_beams=3,
                                               num_return_sequences=2))
    assert list(reply.translations) == rest["translations"]
    assert [list(h.text) for h in reply.alternatives] == rest["alternatives"]
    listed = stub.ListModels(pb.ListModelsRequest())
    assert {(m.source_lang, m.target_lang) for m in listed.models} == {("en", "de"), ("de", "en"), ("en", "ru")}


@pytest.mark.parametrize(
    "request_fields, code",
    [
        (dict(text=[""], source_lang="en", target_lang="de"), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text=["hi"], source_lang="en", target_lang="xx"), grpc.StatusCode.NOT_FOUND),
        (dict(text=["hi"], source_lang="en", target_lang="de", num_beams=1000), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text=["hi"], source_lang="en", target_lang="de", num_beams=0), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_grpc_bad_input(stub, request_fields, code):
    with pytest.raises(grpc.RpcError) as error:
        stub.Translate(pb.TranslateRequest(**request_fields))
    assert error.value.code() == code
    assert stub.Translate(pb.TranslateRequest(text=["ok"], source_lang="en", target_lang="de")).translations


def test_concurrent_requests_are_batched_and_identical_to_unbatched_calls(server):
    runner = server.services[0].runner
    options = GenerationOptions(max_new_tokens=16)
    alone = [runner.translate("en-de", [text], options)[0][0] for text in TEXTS]

    def batch_size_count() -> float:
        metrics = httpx.get(server.rest_url + "/metrics").text
        line = next(row for row in metrics.splitlines() if row.startswith('serving_batch_size_count{batcher="translation'))
        return float(line.split()[-1])

    calls_before = batch_size_count()
    with concurrent.futures.ThreadPoolExecutor(len(TEXTS)) as pool:
        replies = list(pool.map(lambda t: translate(server, text=t, source_lang="en", target_lang="de"), TEXTS))
    calls = batch_size_count() - calls_before
    assert [r.json()["translations"][0] for r in replies] == alone
    assert calls < len(TEXTS), f"{len(TEXTS)} concurrent requests should share model calls, took {calls}"
