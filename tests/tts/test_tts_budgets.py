"""TTS work budgets (characters to speak, seconds to convert) and cancellation inside SpeechT5's decoding loop, with
the tiny models behind a real server on loopback."""

import io
import time

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf

from protos import tts_pb2 as pb
from protos import tts_pb2_grpc as pb_grpc
from services.kit.errors import Cancelled
from services.kit.testing import ServerThread
from services.tts.schemas import SpeechRequest, plan_speech
from services.tts.service import create_service
from services.tts.settings import TTSSettings
from services.tts.synthesis import ConversionJob

CHARACTERS = 200  # the test server's speech budget
SECONDS = 2.0  # and its conversion budget
CANCEL_AT = 4  # decoder steps before the cancel
SENTENCE = "Hello there, this sentence is long enough for many decoder steps."


@pytest.fixture(scope="module")
def server(make_tts_settings):
    settings = make_tts_settings(max_request_cost=CHARACTERS, max_conversion_cost=SECONDS, max_wait_ms=0)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def runner(server):
    return server.services[0].runner


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.TextToSpeechStub(channel)


@pytest.fixture
def steps(runner, count_passes):
    """Decoder steps of the text-to-speech and the voice-conversion model."""
    return count_passes(
        speech=runner.tts.speecht5.decoder.wrapped_decoder, conversion=runner.vc.speecht5.decoder.wrapped_decoder
    )


def wav(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return buffer.getvalue()


def speak(server, **body) -> httpx.Response:
    return httpx.post(server.rest_url + "/v1/audio/speech", json=body, timeout=60)


def convert(server, data: bytes) -> httpx.Response:
    return httpx.post(server.rest_url + "/v1/audio/conversions", files={"file": ("a.wav", data)}, timeout=60)


# -- budgets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_speech_over_the_budget_is_refused_before_synthesis(server, steps, stream):
    text = "Many words to speak here. " * 12  # 312 characters
    started = time.perf_counter()
    response = speak(server, input=text, response_format="wav", stream=stream)
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "max_request_cost" and "TTS_MAX_REQUEST_COST" in error["message"]
    assert steps.speech == 0 and elapsed < 2
    assert speak(server, input="Short.", response_format="wav").status_code == 200


def test_grpc_refuses_speech_over_the_budget(stub, steps):
    request = pb.SynthesizeRequest(input="Many words to speak here. " * 12, response_format="wav")
    for call in (stub.Synthesize, lambda r, **kw: list(stub.SynthesizeStream(r, **kw))):
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "TTS_MAX_REQUEST_COST" in error.value.details()
    assert steps.speech == 0
    assert stub.Synthesize(pb.SynthesizeRequest(input="Short.", response_format="wav"), timeout=30).audio


def test_conversion_over_its_budget_is_refused_before_conversion(server, stub, steps):
    response = convert(server, wav(SECONDS + 1))
    assert response.status_code == 400, response.text
    assert "TTS_MAX_CONVERSION_COST" in response.json()["error"]["message"]
    with pytest.raises(grpc.RpcError) as error:
        stub.Convert(pb.ConvertRequest(audio=wav(SECONDS + 1), response_format="wav"), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "TTS_MAX_CONVERSION_COST" in error.value.details()
    assert steps.conversion == 0
    assert convert(server, wav(SECONDS - 0.5)).status_code == 200


def test_costs_and_the_default_budgets(runner):
    job = plan_speech(SpeechRequest(input="Hello there. Good night!"), runner, runner.settings).job
    assert runner.cost(job) == len("Hello there.") + len("Good night!")
    samples = np.zeros(24000, dtype=np.float32)
    assert runner.cost(ConversionJob(samples, job.speaker)) == pytest.approx(1.5)
    defaults = TTSSettings()
    assert defaults.max_input_chars <= defaults.max_request_cost
    assert defaults.max_conversion_seconds <= defaults.max_conversion_cost


# -- cancellation inside generate_speech ---------------------------------------------------------------------------


def speech_job(runner, text=SENTENCE, **options):
    return plan_speech(SpeechRequest(input=text, **options), runner, runner.settings).job


@pytest.mark.parametrize("cause", ["client gone", "deadline"])
@pytest.mark.parametrize("stream", [False, True])
def test_synthesis_stops_within_a_step_of_the_cancel(runner, steps, queued_work, cause, stream):
    # Two sentences: a streamed request synthesizes them in two rounds, which the cancel must skip too.
    work = queued_work(speech_job(runner, f"{SENTENCE} {SENTENCE}", stream=stream))
    steps.cancel_at("speech", CANCEL_AT, [work], cause)
    assert isinstance(runner.predict_speech([work])[0], Cancelled)
    assert steps.speech <= CANCEL_AT + 1, f"{steps.speech} decoder steps for a request cancelled at {CANCEL_AT}"


def test_conversion_stops_within_a_step_of_the_cancel(runner, steps, queued_work):
    samples = np.sin(np.arange(16000, dtype=np.float32) / 10)
    work = queued_work(ConversionJob(samples, runner.voices.get(None)))
    steps.cancel_at("conversion", CANCEL_AT, [work])
    assert isinstance(runner.predict_conversion([work])[0], Cancelled)
    assert steps.conversion <= CANCEL_AT + 1


def test_one_waiting_request_keeps_the_call_decoding(runner, steps, queued_work):
    gone, waiting = queued_work(speech_job(runner)), queued_work(speech_job(runner))
    steps.cancel_at("speech", CANCEL_AT, [gone])
    results = runner.predict_speech([gone, waiting])
    assert results[1].duration > 0
    # Random tiny weights never stop by themselves: the sentence's full length proves nothing cut it short.
    assert steps.speech > 4 * CANCEL_AT
