"""Expensive requests against the autoregressive services at their default work budgets, and expensive requests
whose client leaves: neither may hold the one model thread that every other request waits for.

Measured before the budgets: one translation of 32 texts x 8 beams x 8 returns x 512 new tokens (6 KB, every field
within its own limit) held the tiny model for 14 s (a real one for minutes) and got 200. Before the stop signal, a
transcription or synthesis whose client had gone ran to its end inside generate().
"""

import io
import time

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf

from protos import translation_pb2 as translation_pb
from protos import translation_pb2_grpc as translation_grpc
from protos import tts_pb2 as tts_pb
from protos import tts_pb2_grpc as tts_grpc
from services.asr.service import create_service as create_asr
from services.kit.testing import ServerThread
from services.translation.service import create_service as create_translation
from services.translation.settings import TranslationSettings
from services.tts.service import create_service as create_tts
from tests.hostile.leaving import post_and_leave

ATTACK = dict(
    text=[f"Sentence {i} is long enough to keep a translation model busy for many decoding steps. " * 2
          for i in range(32)],
    source_lang="en",
    target_lang="de",
    num_beams=8,
    num_return_sequences=8,
    max_new_tokens=512,
)
PAUSE_AT = 3  # decoder steps into an expensive request when its client leaves


def wait_idle(server, timeout: float = 60) -> float:
    """Seconds until every batcher of the server's service has nothing queued or running."""
    started = time.monotonic()
    while any(batcher.busy for batcher in server.services[0].batchers):
        assert time.monotonic() - started < timeout, "the model thread is still busy"
        time.sleep(0.01)
    return time.monotonic() - started


# -- translation: the measured attack -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def translation(models_dir):
    settings = TranslationSettings(models={"en-de": str(models_dir / "translation" / "wmt19-en-de")}, threads=1,
                                   log_level="warning")
    with ServerThread(lambda: [create_translation(settings)], settings) as server:
        yield server


def test_the_translation_attack_is_refused_in_milliseconds(translation, count_passes):
    steps = count_passes(decoder=translation.services[0].runner.models["en-de"].model.decoder)
    started = time.perf_counter()
    response = httpx.post(translation.rest_url + "/v1/translate", json=ATTACK, timeout=60)
    rest_seconds = time.perf_counter() - started
    with grpc.insecure_channel(translation.grpc_target) as channel:
        stub = translation_grpc.TranslationStub(channel)
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as error:
            stub.Translate(translation_pb.TranslateRequest(**ATTACK), timeout=30)
        grpc_seconds = time.perf_counter() - started
        served = stub.Translate(translation_pb.TranslateRequest(text=["Hello world."], source_lang="en",
                                                                target_lang="de", max_new_tokens=8))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "max_request_cost"
    assert "TRANSLATION_MAX_REQUEST_COST" in response.json()["error"]["message"]
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "TRANSLATION_MAX_REQUEST_COST" in error.value.details()
    assert rest_seconds < 1 and grpc_seconds < 1, (rest_seconds, grpc_seconds)
    assert len(served.translations) == 1
    assert steps.decoder <= 8, "only the normal request reached the model"


def test_an_abandoned_translation_frees_the_model_within_a_step(translation, count_passes):
    body = dict(ATTACK, text=ATTACK["text"][:4], num_return_sequences=1, max_new_tokens=200)  # within budget
    steps = count_passes(decoder=translation.services[0].runner.models["en-de"].model.decoder)
    steps.pause("decoder", PAUSE_AT)
    post_and_leave(translation, httpx.Request("POST", translation.rest_url + "/v1/translate", json=body), steps)
    wait_idle(translation)
    assert steps.decoder <= PAUSE_AT + 1, f"{steps.decoder} decoder steps for a request abandoned at step {PAUSE_AT}"



# Source tokens: the encoder's work and memory (and every decoded token's cross-attention) grow with them, and
# FSMT's tokenizer escapes characters into several tokens ('|' becomes '&#124;': 2,000 characters, 12,001 tokens).
# Measured before: 6 such texts with max_new_tokens 1 were priced 6 beam-tokens and cost 24 s and +1.4 GiB.
ESCAPED_TEXT = "|" * 2000
LONGEST_TEXT = "||||| " * 34  # 1,021 tokens: within the tiny model's 1,024 positions


def test_a_text_past_the_models_positions_is_refused_before_the_encoder(translation, count_passes):
    runner = translation.services[0].runner
    passes = count_passes(encoder=runner.models["en-de"].model.encoder)
    body = dict(text=["Hello."] + [ESCAPED_TEXT] * 5, source_lang="en", target_lang="de", max_new_tokens=1)
    response = httpx.post(translation.rest_url + "/v1/translate", json=body, timeout=60)
    with grpc.insecure_channel(translation.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as error:
            translation_grpc.TranslationStub(channel).Translate(translation_pb.TranslateRequest(**body), timeout=60)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "text[1]" in message and "12001 source tokens" in message and "1024" in message, message
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_position_embeddings" in error.value.details()
    assert passes.encoder == 0, "a refused request must not reach the model"


def test_many_long_texts_are_priced_by_their_source_tokens(translation, count_passes):
    runner = translation.services[0].runner
    passes = count_passes(encoder=runner.models["en-de"].model.encoder)
    # 32 x 8 x 200 = 51,200 beam-tokens: within the budget when the 32,672 source tokens cost nothing.
    body = dict(text=[LONGEST_TEXT] * 32, source_lang="en", target_lang="de", num_beams=8, max_new_tokens=200)
    response = httpx.post(translation.rest_url + "/v1/translate", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "max_request_cost"
    assert "TRANSLATION_MAX_REQUEST_COST" in response.json()["error"]["message"]
    assert passes.encoder == 0
    one = httpx.post(translation.rest_url + "/v1/translate", timeout=60,
                     json=dict(body, text=[LONGEST_TEXT], num_beams=1, max_new_tokens=4))
    assert one.status_code == 200, one.text



# -- ASR: the longest upload, abandoned ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asr(make_asr_settings):
    # The model's own 448 tokens a window, as in production: an abandoned long clip would decode for a while.
    settings = make_asr_settings(max_new_tokens=None, max_audio_seconds=120)
    with ServerThread(lambda: [create_asr(settings)], settings) as server:
        yield server


def wav(seconds: float, rate: int = 16000) -> bytes:
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV")
    return buffer.getvalue()


@pytest.mark.parametrize("decoding", ["plain", "assisted"])
def test_an_abandoned_long_transcription_frees_the_model_within_a_step(asr, decoding, count_passes):
    model = asr.services[0].runner.model
    steps = count_passes(encoder=model.model.encoder, decoder=model.model.decoder)
    steps.pause("decoder", PAUSE_AT)
    request = httpx.Request("POST", asr.rest_url + "/v1/audio/transcriptions",
                            files={"file": ("long.wav", wav(100), "audio/wav")},
                            data={"language": "en", "decoding": decoding, "response_format": "verbose_json"})
    post_and_leave(asr, request, steps)
    wait_idle(asr)
    assert steps.decoder <= PAUSE_AT + 1, f"{steps.decoder} decoder passes for a request abandoned at {PAUSE_AT}"
    assert steps.encoder == 1, f"{steps.encoder} of the clip's 4 windows were encoded"
    short = httpx.post(asr.rest_url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav(2), "audio/wav")},
                       data={"language": "en"}, timeout=60)
    assert short.status_code == 200, short.text


# -- TTS: a long synthesis stream, cancelled ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[True, False], ids=["continuous", "whole-request"])
def tts(make_tts_settings, request):
    settings = make_tts_settings(min_len_ratio=4.0, max_len_ratio=4.0, continuous_batching=request.param)
    with ServerThread(lambda: [create_tts(settings)], settings) as server:
        yield server


def test_a_cancelled_synthesis_stream_frees_the_model_within_a_step(tts, count_passes):
    runner = tts.services[0].runner
    text = " ".join(f"This is sentence number {i} of a long text that nobody will listen to." for i in range(40))
    first_round = len(runner.sentences(text)[0].token_ids) * 4 // runner.tts.config.reduction_factor
    # One pass per decoding step in generate_speech and in the continuous loop alike.
    steps = count_passes(decoder=runner.tts.speecht5.decoder.wrapped_decoder.layers[0].final_layer_norm)
    steps.pause("decoder", first_round + PAUSE_AT)
    with grpc.insecure_channel(tts.grpc_target) as channel:
        call = tts_grpc.TextToSpeechStub(channel).SynthesizeStream(
            tts_pb.SynthesizeRequest(input=text, response_format="pcm"), timeout=120
        )
        first = next(call)  # the first sentence, streamed alone; then the other 39 in one call
        assert first.sentence_index == 0
        assert steps.reached.wait(60)
        call.cancel()
        time.sleep(1)  # the servicer's task is cancelled, and with it the request
        steps.release.set()
        wait_idle(tts)
    assert steps.decoder <= first_round + PAUSE_AT + 1, f"{steps.decoder - first_round} steps into the abandoned call"
    with grpc.insecure_channel(tts.grpc_target) as channel:
        reply = tts_grpc.TextToSpeechStub(channel).Synthesize(
            tts_pb.SynthesizeRequest(input="Still here.", response_format="wav"), timeout=60)
    assert reply.audio

