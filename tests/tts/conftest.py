"""One tiny-model TTS server for the whole tts test session (REST + gRPC on loopback)."""

import sys
from pathlib import Path

import pytest

from services.kit.testing import ServerThread
from services.tts.service import create_service
from services.tts.settings import TTSSettings

REPO = Path(__file__).resolve().parents[2]
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
        max_wait_ms=50.0,
        shutdown_grace_s=2.0,
        log_level="warning",
    )
    options.update(overrides)
    return TTSSettings(**options)


@pytest.fixture(scope="session")
def tts_models(models_dir: Path) -> Path:
    if not (models_dir / "tts" / "voices").is_dir():
        # The builder's command line may not cover tts alone: build just these models.
        sys.path.insert(0, str(REPO))
        from tools.tiny_models import tts

        tts.build(models_dir)
    return models_dir


@pytest.fixture(scope="session")
def tts_server(tts_models: Path):
    settings = tiny_settings(tts_models)
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
