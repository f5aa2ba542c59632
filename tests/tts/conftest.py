"""One tiny-model TTS server for the whole tts test session (REST + gRPC on loopback)."""

from pathlib import Path

import pytest

from services.kit.testing import ServerThread
from services.tts.service import create_service
from services.tts.settings import TTSSettings

# Random tiny weights never reach a stop probability that means anything: length = ratio x tokens instead.
LENGTH_RATIO = 2.0


def tiny_settings(models: Path, **overrides) -> TTSSettings:
    tts = models / "tts"
    options = dict(
        model=str(tts / "speecht5_tts"),
        vocoder=str(tts / "speecht5_hifigan"),
        vc_model=str(tts / "speecht5_vc"),
        voices_dir=tts / "voices",
        threads=1,
        stop_threshold=3.0,
        min_len_ratio=LENGTH_RATIO,
        max_len_ratio=LENGTH_RATIO,
        vc_stop_threshold=3.0,
        vc_min_len_ratio=1.0,
        vc_max_len_ratio=1.0,
        max_conversion_seconds=5.0,
        max_wait_ms=50.0, wait_when_idle=True,
        shutdown_grace_s=2.0,
        log_level="warning",
    )
    options.update(overrides)
    return TTSSettings(**options)


@pytest.fixture(scope="session")
def make_tts_settings(models_dir: Path):
    """`make_tts_settings(**overrides)`: the tiny-model settings with some changed, for a server of a test's own."""
    return lambda **overrides: tiny_settings(models_dir, **overrides)


@pytest.fixture(scope="session")
def tts_server(models_dir: Path):
    settings = tiny_settings(models_dir)
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
