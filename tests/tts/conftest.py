"""One tiny-model TTS server for the whole tts test session (REST + gRPC on loopback)."""


import pytest

from services.kit.testing import ServerThread
from services.tts.service import create_service


@pytest.fixture(scope="session")
def tts_server(make_tts_settings):
    # Requests wait a little for company even when the model is idle, so that the batching tests see batches.
    settings = make_tts_settings(max_wait_ms=50.0, wait_when_idle=True)
    with ServerThread(lambda: [create_service(settings)], settings) as server:
        yield server


@pytest.fixture(scope="session")
def runner(tts_server):
    return tts_server.services[0].runner


@pytest.fixture
def patch_synthesize(runner, monkeypatch):
    """Run `hook(token_ids)` in the model thread before each generate call of the runner."""

    def install(hook):
        original = runner.synthesize

        def synthesize(token_ids, speakers, speeds):
            hook(token_ids)
            return original(token_ids, speakers, speeds)

        monkeypatch.setattr(runner, "synthesize", synthesize)

    return install
