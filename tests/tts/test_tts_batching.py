"""Whole-request batching (TTS_CONTINUOUS_BATCHING=false): how requests share SpeechT5 generate calls: pooled
sentences, seeded requests alone, per-row lengths. (tests/tts/test_tts_continuous.py covers the default.)"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from services.kit.testing import ServerThread
from services.tts.service import create_service


@pytest.fixture(scope="module")
def tts_server(make_tts_settings):
    # Requests wait a little for company even when the model is idle, so that the tests see batches.
    settings = make_tts_settings(max_wait_ms=50.0, wait_when_idle=True, continuous_batching=False)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        yield server


@pytest.fixture(scope="module")
def runner(tts_server):  # the conftest's runner is the session server's
    return tts_server.services[0].runner


def speak(server, **body) -> httpx.Response:
    """Whole-file answers: a streamed one synthesizes its first sentence alone, which changes the calls."""
    return httpx.post(
        f"{server.rest_url}/v1/audio/speech",
        json={"response_format": "pcm", "stream": False, **body},
        timeout=60,
    )


def reached(condition, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_for(condition, timeout=20.0):
    assert reached(condition, timeout), "condition not reached"


def run_while_model_is_busy(server, patch_synthesize, bodies: list[dict]) -> list[int]:
    """Hold the model thread on a first request while `bodies` queue up; return rows per generate call."""
    holding, release = threading.Event(), threading.Event()
    rows_per_call = []

    def record(token_ids):
        rows_per_call.append(len(token_ids))
        if len(rows_per_call) == 1:
            holding.set()
            release.wait(timeout=20)

    patch_synthesize(record)
    batcher = next(b for b in server.services[0].batchers if b.name == "tts.speech")
    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        blocker = pool.submit(speak, server, input="Hold the model.")
        assert holding.wait(timeout=20)
        queued = [pool.submit(speak, server, **body) for body in bodies]
        wait_for(lambda: batcher.queue_depth == len(bodies))
        release.set()
        assert all(f.result().status_code == 200 for f in [blocker, *queued])
    return rows_per_call[1:]


def test_sentences_of_queued_requests_share_one_generate_call(tts_server, patch_synthesize):
    bodies = [{"input": f"Request {i} first. Request {i} second."} for i in range(3)]
    assert run_while_model_is_busy(tts_server, patch_synthesize, bodies) == [6]


def test_seeded_requests_run_alone(tts_server, patch_synthesize):
    bodies = [
        {"input": "Plain one. Plain two."},
        {"input": "Seeded one. Seeded two.", "seed": 1},
        {"input": "Plain."},
    ]
    # The unseeded requests pool their three sentences; the seeded one makes its first sentence, then the rest.
    assert sorted(run_while_model_is_busy(tts_server, patch_synthesize, bodies)) == [1, 1, 3]


def test_each_sentence_keeps_its_own_length_in_a_shared_call(runner):
    short, long = (runner.sentences(t)[0].token_ids for t in ("Hi.", "A considerably longer sentence here."))
    voice = runner.voices.get(None)
    together = runner.synthesize([short, long], [voice, voice], [1.0, 1.0])
    alone = [runner.synthesize([ids], [voice], [1.0])[0] for ids in (short, long)]
    assert [w.size for w in together] == [w.size for w in alone]
    assert together[0].size == len(short) * runner.settings.max_len_ratio * 256
    assert all(np.isfinite(w).all() for w in together)


def test_synthesis_stops_when_a_streaming_client_goes_away(tts_server, patch_synthesize):
    text = " ".join(f"Sentence number {i}." for i in range(40))  # calls of 1, 16, 16 and 7 sentences
    client_gone = threading.Event()
    rows_per_call, server_let_go = [], []

    def record(token_ids):
        rows_per_call.append(len(token_ids))
        if len(rows_per_call) == 2:  # may start before the client has even read the first sentence
            client_gone.wait(timeout=20)
            server_let_go.append(reached(lambda: tts_server.state.inflight == 0))

    patch_synthesize(record)
    body = {"input": text, "stream": True, "response_format": "pcm"}
    with httpx.stream("POST", f"{tts_server.rest_url}/v1/audio/speech", json=body, timeout=60) as response:
        next(response.iter_raw())
    client_gone.set()
    batcher = next(b for b in tts_server.services[0].batchers if b.name == "tts.speech")
    wait_for(lambda: not batcher.busy)
    # The call running when the client left finishes; no new one starts.
    assert rows_per_call in ([1], [1, 16])
    assert server_let_go in ([], [True])
