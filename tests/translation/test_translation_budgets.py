"""Translation work budgets, cancellation inside generate() and one length limit per call, with the tiny FSMT
models behind a real server on loopback."""

import json
import logging
import socket
import time

import grpc
import httpx
import pytest

from protos import translation_pb2 as pb
from protos import translation_pb2_grpc as pb_grpc
from services.kit.testing import ServerThread
from services.translation.schemas import TranslateRequest, build_job
from services.translation.service import create_service
from services.translation.settings import TranslationSettings

# The measured attack: 32 texts (6 KB) x 8 beams x 8 returned sequences x 512 new tokens, all within the
# per-field limits; it held the tiny model for 14 s and a real one for minutes.
ATTACK = dict(
    text=[f"Sentence number {i} is long enough to keep a translation model busy for many steps, " * 2
          for i in range(32)],
    source_lang="en",
    target_lang="de",
    num_beams=8,
    num_return_sequences=8,
    max_new_tokens=512,
)
LONG_TOKENS = 60  # how far a decode that nobody stops runs in the cancellation tests
CANCEL_AT = 4  # decoder steps before the cancel


@pytest.fixture(scope="module")
def server(models_dir):
    # The service's default budgets; only the pairs and the thread count are the tests'.
    settings = TranslationSettings(
        models={"en-de": str(models_dir / "translation" / "wmt19-en-de")},
        threads=1,
        max_wait_ms=0,
        log_level="warning",
    )
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def runner(server):
    return server.services[0].runner


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.TranslationStub(channel)


@pytest.fixture
def decoder_steps(runner, count_passes):
    """Forward passes of the en-de decoder (one per generated token)."""
    return count_passes(decoder=runner.models["en-de"].model.decoder)


def translate(server, **body) -> httpx.Response:
    return httpx.post(server.rest_url + "/v1/translate", json=body, timeout=60)


# -- budgets ------------------------------------------------------------------------------------------------------


def test_the_attack_is_refused_at_once_naming_the_budget(server, decoder_steps):
    started = time.perf_counter()
    response = translate(server, **ATTACK)
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "max_request_cost"
    assert float(error["message"].split()[2]) >= 32 * 8 * 8 * 512, "priced at least its beam-tokens"
    assert "TRANSLATION_MAX_REQUEST_COST" in error["message"]
    assert decoder_steps.decoder == 0, "a refused request must not reach the model"
    assert elapsed < 2, f"refusal took {elapsed:.2f} s"
    assert translate(server, text="Hello world.", source_lang="en", target_lang="de").status_code == 200


def test_grpc_refuses_the_attack_with_invalid_argument(stub, decoder_steps):
    with pytest.raises(grpc.RpcError) as error:
        stub.Translate(pb.TranslateRequest(**ATTACK), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "TRANSLATION_MAX_REQUEST_COST" in error.value.details()
    assert decoder_steps.decoder == 0
    assert stub.Translate(pb.TranslateRequest(text=["Hello"], source_lang="en", target_lang="de")).translations


def test_the_default_budget_admits_every_request_at_default_length(runner):
    settings = TranslationSettings()
    largest = TranslateRequest(text=["word"] * settings.max_texts, source_lang="en", target_lang="de",
                               num_beams=settings.max_num_beams)
    assert runner.cost(build_job(largest, settings, runner)) <= settings.max_request_cost
    one_text_every_limit = TranslateRequest(
        text="word", source_lang="en", target_lang="de", num_beams=settings.max_num_beams,
        num_return_sequences=settings.max_num_beams, max_new_tokens=settings.max_new_tokens,
    )
    assert runner.cost(build_job(one_text_every_limit, settings, runner)) <= settings.max_request_cost
    assert runner.cost(build_job(TranslateRequest(**ATTACK), settings, runner)) > 10 * settings.max_request_cost


def test_cost_counts_the_models_own_beams_when_the_request_sets_none(runner):
    settings = TranslationSettings()
    default = build_job(TranslateRequest(text=["a", "b"], source_lang="en", target_lang="de"), settings, runner)
    beams = runner.models["en-de"].generation_config.num_beams
    assert beams > 1
    explicit = build_job(TranslateRequest(text=["a", "b"], source_lang="en", target_lang="de", num_beams=beams),
                         settings, runner)
    assert runner.cost(default) == runner.cost(explicit) > 2 * beams * settings.default_max_new_tokens


def test_a_normal_request_within_the_budget_is_served(server):
    response = translate(server, text=["Hello world.", "Good night"], source_lang="en", target_lang="de",
                         num_beams=4, num_return_sequences=2, max_new_tokens=12)
    assert response.status_code == 200, response.text
    assert [len(a) for a in response.json()["alternatives"]] == [2, 2]


@pytest.mark.parametrize("value", [1e9, -1e9, "Infinity", "NaN"])
def test_extreme_length_penalty_is_refused(server, value):
    body = json.dumps({"text": "hi", "source_lang": "en", "target_lang": "de"})[:-1] + f', "length_penalty": {value}}}'
    response = httpx.post(server.rest_url + "/v1/translate", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "length_penalty" in response.json()["error"]["message"]


# -- cancellation inside generate() -------------------------------------------------------------------------------


def translation_job(runner, **request):
    return build_job(TranslateRequest(source_lang="en", target_lang="de", **request), runner.settings, runner)


@pytest.mark.parametrize("cause", ["client gone", "deadline"])
@pytest.mark.parametrize("beams", [1, 4])
def test_generate_stops_within_a_step_once_the_request_is_cancelled(
    runner, decoder_steps, queued_work, cause, beams
):
    work = queued_work(
        translation_job(runner, text=["Hello world.", "Good night"], num_beams=beams, max_new_tokens=LONG_TOKENS)
    )
    decoder_steps.cancel_at("decoder", CANCEL_AT, [work], cause)
    runner.predict_batch([work])
    assert decoder_steps.decoder <= CANCEL_AT + 1, f"decoded {decoder_steps.decoder} steps after the cancel"


def test_one_waiting_request_keeps_the_batch_decoding(runner, decoder_steps, queued_work):
    gone = queued_work(translation_job(runner, text="Hello world.", max_new_tokens=LONG_TOKENS, num_beams=1))
    waiting = queued_work(translation_job(runner, text="Good night", max_new_tokens=LONG_TOKENS, num_beams=1))
    decoder_steps.cancel_at("decoder", CANCEL_AT, [gone])
    results = runner.predict_batch([gone, waiting])
    # The random tiny model never emits end-of-text: the whole length proves nothing else stopped it.
    assert decoder_steps.decoder == LONG_TOKENS
    assert len(results[1][0]) > 0


def test_a_disconnected_rest_client_frees_the_model_within_a_step(server, decoder_steps):
    """End to end: the server notices the closed connection, the batcher cancels the work, generate stops."""
    decoder_steps.pause("decoder", CANCEL_AT)
    body = json.dumps({"text": ["Hello world.", "Good night"], "source_lang": "en", "target_lang": "de",
                       "num_beams": 4, "max_new_tokens": LONG_TOKENS}).encode()
    head = (f"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    gone_before = client_gone_count(server)
    with socket.create_connection(("127.0.0.1", server.settings.rest_port)) as client:
        client.sendall(head + body)
        assert decoder_steps.reached.wait(30), "the request never reached the model"
    try:
        deadline = time.monotonic() + 10
        while client_gone_count(server) == gone_before:
            assert time.monotonic() < deadline, "the server never noticed the disconnect"
            time.sleep(0.05)
    finally:
        decoder_steps.release.set()
    batcher = server.services[0].batchers[0]
    deadline = time.monotonic() + 30
    while batcher.busy:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert decoder_steps.decoder <= CANCEL_AT + 1, f"decoded {decoder_steps.decoder} steps after the disconnect"


def client_gone_count(server) -> float:
    metrics = httpx.get(server.rest_url + "/metrics").text
    prefix = 'serving_rejected_total{batcher="translation.translate",reason="client_gone"}'
    return next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix)), 0.0)


# -- one length limit ---------------------------------------------------------------------------------------------


@pytest.fixture
def transformers_log():
    """Records what transformers logs (its loggers do not propagate to the root logger)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    yield records
    library.removeHandler(handler)


def test_a_translation_logs_no_length_warning(server, transformers_log, recwarn):
    for request in (dict(num_beams=1, max_new_tokens=8), dict(), dict(num_beams=3, num_return_sequences=2)):
        response = translate(server, text=["Hello world."], source_lang="en", target_lang="de", **request)
        assert response.status_code == 200, response.text
    messages = [record.getMessage() for record in transformers_log] + [str(w.message) for w in recwarn]
    assert not [m for m in messages if "max_length" in m or "max_new_tokens" in m], messages
