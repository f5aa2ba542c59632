"""One tiny-model TTS server for the whole tts test session (REST + gRPC on loopback)."""

import pytest

from services.kit.testing import ServerThread
from services.tts.service import create_service


@pytest.fixture(scope="session")
def tts_server(make_tts_settings):
    settings = make_tts_settings()
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        yield server


@pytest.fixture(scope="session")
def runner(tts_server):
    return tts_server.services[0].runner


@pytest.fixture
def patch_synthesize(runner, monkeypatch):
    """Run `hook(token_ids)` in the model thread before each generate call of the runner, and before each call
    the continuous decode loop starts (the same sentences, grouped the same way)."""
    from services.tts.continuous import SpeechLoop

    def install(hook):
        original = runner.synthesize

        def synthesize(token_ids, speakers, speeds):
            hook(token_ids)
            return original(token_ids, speakers, speeds)

        original_prepare = SpeechLoop._prepare_call

        def prepare_call(loop, job):
            hook([job.speech.sentences[i].token_ids for i in job.calls[job.next_call]])
            return original_prepare(loop, job)

        monkeypatch.setattr(runner, "synthesize", synthesize)
        monkeypatch.setattr(SpeechLoop, "_prepare_call", prepare_call)

    return install
