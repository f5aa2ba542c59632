"""ASR work budgets, cancellation inside generate() (plain, assisted and between long-form windows) and one length
limit per window, with the tiny Whisper pair behind a real server on loopback."""

import logging
import time

import grpc
import httpx
import pytest

from protos import asr_pb2 as pb
from protos import asr_pb2_grpc as pb_grpc
from services.asr.domain import ASRJob, DecodeOptions
from services.asr.service import create_service
from services.asr.settings import ASRSettings
from services.kit.errors import Cancelled
from services.kit.testing import ServerThread

BUDGET_SECONDS = 45  # the test server's budget, in seconds of audio at its tokens per window
CANCEL_AT = 4  # main decoder passes before the cancel


@pytest.fixture(scope="module")
def server(make_asr_settings):
    window = make_asr_settings().max_new_tokens
    settings = make_asr_settings(max_request_cost=BUDGET_SECONDS * window, max_wait_ms=0)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def runner(server):
    return server.services[0].runner


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.SpeechRecognitionStub(channel)


@pytest.fixture
def passes(runner, count_passes):
    """Forward passes of the main model's encoder (one per 30 s window) and decoder (one per decoding step, or per
    verification in assisted decoding)."""
    return count_passes(encoder=runner.model.model.encoder, decoder=runner.model.model.decoder)


def post(server, content: bytes, **data) -> httpx.Response:
    files = {"file": ("clip.wav", content, "audio/wav")}
    return httpx.post(server.rest_url + "/v1/audio/transcriptions", data=data, files=files, timeout=120)


# -- budgets ------------------------------------------------------------------------------------------------------


def test_audio_over_the_budget_is_refused_before_decoding(server, passes, audio_file):
    started = time.perf_counter()
    response = post(server, audio_file(BUDGET_SECONDS + 15, seed=5), language="en")
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "max_request_cost" and "ASR_MAX_REQUEST_COST" in error["message"]
    assert (passes.encoder, passes.decoder) == (0, 0), "a refused request must not reach the model"
    assert elapsed < 5, f"refusal took {elapsed:.2f} s"
    assert post(server, audio_file(3, seed=6), language="en").status_code == 200


def test_grpc_refuses_audio_over_the_budget(stub, passes, audio_file):
    request = pb.TranscribeRequest(audio=audio_file(BUDGET_SECONDS + 15, seed=5),
                                   options=pb.TranscribeOptions(language="en"))
    with pytest.raises(grpc.RpcError) as error:
        stub.Transcribe(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ASR_MAX_REQUEST_COST" in error.value.details()
    assert (passes.encoder, passes.decoder) == (0, 0)
    reply = stub.Transcribe(pb.TranscribeRequest(audio=audio_file(3, seed=6),
                                                 options=pb.TranscribeOptions(language="en")), timeout=60)
    assert reply.duration == pytest.approx(3.0)


def test_cost_is_seconds_times_the_window_limit(runner, audio):
    window = runner.settings.max_new_tokens
    assert runner.window_tokens == window
    assert runner.cost(ASRJob(audio(12.5, seed=1))) == pytest.approx(12.5 * window)
    # The defaults admit the longest upload at the model's own limit (no ASR_MAX_NEW_TOKENS).
    defaults = ASRSettings()
    assert runner.model_max_length == 448
    assert defaults.max_audio_seconds * runner.model_max_length <= defaults.max_request_cost


def test_a_prompt_longer_than_whisper_can_condition_on_is_refused(server, audio_file):
    response = post(server, audio_file(2, seed=7), language="en", prompt="\u4e00\u4e8c" * 500)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"
    assert "tokens" in response.json()["error"]["message"]
    fitting = post(server, audio_file(2, seed=7), language="en", prompt="hello world " * 20)
    assert fitting.status_code == 200, fitting.text


# -- cancellation inside generate() -------------------------------------------------------------------------------


@pytest.mark.parametrize("cause", ["client gone", "deadline"])
@pytest.mark.parametrize("decoding", ["plain", "assisted"])
def test_decoding_stops_within_a_step_of_the_cancel(runner, passes, queued_work, audio, decoding, cause):
    works = [queued_work(ASRJob(audio(5, seed=40 + i), language="en", decoding=decoding))
             for i in range(2 if decoding == "plain" else 1)]
    passes.cancel_at("decoder", CANCEL_AT, works, cause)
    results = runner.predict_batch(works)
    assert len(results) == len(works)
    assert passes.decoder <= CANCEL_AT + 1, f"{passes.decoder} decoder passes for a request cancelled at {CANCEL_AT}"


@pytest.mark.parametrize("decoding", ["plain", "assisted"])
def test_long_form_stops_before_the_next_window(runner, passes, queued_work, audio, decoding):
    work = queued_work(ASRJob(audio(75, seed=44), DecodeOptions(timestamps=True), "en", decoding))
    passes.cancel_at("decoder", CANCEL_AT, [work])
    assert isinstance(runner.predict_batch([work])[0], Cancelled)
    assert passes.encoder == 1, f"{passes.encoder} of the clip's 3 windows were encoded after the cancel"
    assert passes.decoder <= CANCEL_AT + 1


def test_one_waiting_request_keeps_the_batch_decoding(runner, passes, queued_work, audio):
    gone, waiting = (queued_work(ASRJob(audio(5, seed=50 + i), language="en", decoding="plain")) for i in range(2))
    passes.cancel_at("decoder", CANCEL_AT, [gone])
    results = runner.predict_batch([gone, waiting])
    # The random tiny model never ends a transcript early: the whole window proves nothing stopped it.
    window = runner.settings.max_new_tokens
    assert len(results[1].tokens) == window
    assert passes.decoder == window


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


def test_transcriptions_log_no_length_warning(server, transformers_log, recwarn, audio_file):
    for fields in (dict(decoding="plain"), dict(decoding="assisted"), dict(response_format="verbose_json")):
        response = post(server, audio_file(3, seed=8), language="en", **fields)
        assert response.status_code == 200, response.text
    long_form = post(server, audio_file(40, seed=9), language="en", decoding="plain")
    assert long_form.status_code == 200, long_form.text
    messages = [record.getMessage() for record in transformers_log] + [str(w.message) for w in recwarn]
    assert not [m for m in messages if "max_length" in m or "max_new_tokens" in m], messages
