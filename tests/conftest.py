"""Shared fixtures: the tiny offline models (built once if `make models` has not run), settings for the tiny
ASR and TTS models that several test folders serve, and a counter of model forward passes."""

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from services.asr.settings import ASRSettings
from services.kit.batcher import Work
from services.tts.settings import TTSSettings

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"

# Random tiny TTS weights never reach a stop probability that means anything: length = ratio x tokens instead.
TTS_LENGTH_RATIO = 2.0
# Random tiny Whisper weights rarely emit end-of-text; a per-window cap keeps every decode short.
ASR_MAX_NEW_TOKENS = 40


@pytest.fixture(scope="session")
def models_dir() -> Path:
    # Idempotent and quick when `make models` already ran (as `make test` does first).
    subprocess.run([sys.executable, "-m", "tools.tiny_models", "--out", str(MODELS)], check=True, cwd=REPO)
    return MODELS


@pytest.fixture(scope="session")
def make_tts_settings(models_dir: Path) -> Callable[..., TTSSettings]:
    """`make_tts_settings(**overrides)`: settings for the tiny SpeechT5 models, some changed."""

    def make(**overrides) -> TTSSettings:
        tts = models_dir / "tts"
        options = dict(
            model=str(tts / "speecht5_tts"),
            vocoder=str(tts / "speecht5_hifigan"),
            vc_model=str(tts / "speecht5_vc"),
            voices_dir=tts / "voices",
            threads=1,
            stop_threshold=3.0,
            min_len_ratio=TTS_LENGTH_RATIO,
            max_len_ratio=TTS_LENGTH_RATIO,
            vc_stop_threshold=3.0,
            vc_min_len_ratio=1.0,
            vc_max_len_ratio=1.0,
            max_conversion_seconds=5.0,
            shutdown_grace_s=2.0,
            log_level="warning",
        )
        return TTSSettings(**{**options, **overrides})

    return make


@pytest.fixture(scope="session")
def make_asr_settings(models_dir: Path) -> Callable[..., ASRSettings]:
    """`make_asr_settings(**overrides)`: settings for the tiny Whisper pair (drafting forced on by its generation
    config), some changed. One thread per model: the machine is shared and oversubscribed OpenMP threads spin."""

    def make(**overrides) -> ASRSettings:
        options = dict(
            model=str(models_dir / "asr" / "whisper"),
            assistant_model=str(models_dir / "asr" / "whisper-assistant"),
            threads=1,
            max_new_tokens=ASR_MAX_NEW_TOKENS,
            max_audio_seconds=90,
            log_level="warning",
            path_choice="threshold",  # `auto` by a fixed rule: tests never depend on timings
            encoder_dtype=os.environ.get("TEST_ASR_ENCODER_DTYPE", "float32"),  # `auto` would measure
            head_dtype=os.environ.get("TEST_ASR_HEAD_DTYPE", "float32"),
        )
        return ASRSettings(**{**options, **overrides})

    return make


class ForwardPasses:
    """Counts forward passes of named modules (a decoder's: one per generated token), read as attributes
    (`passes.decoder`). `on_pass(name, n)` runs in the model thread at each pass, so that a test can cancel a
    request at a known step; `pause(name, at)` holds the model thread there until `release` is set."""

    def __init__(self, **modules):
        self.counts = dict.fromkeys(modules, 0)
        self.on_pass: Callable[[str, int], None] = lambda name, n: None
        self.reached, self.release = threading.Event(), threading.Event()
        self._handles = [
            module.register_forward_hook(partial(self._passed, name)) for name, module in modules.items()
        ]

    def __getattr__(self, name: str) -> int:
        counts = self.__dict__.get("counts", {})
        if name in counts:
            return counts[name]
        raise AttributeError(name)

    def _passed(self, name: str, *_) -> None:
        self.counts[name] += 1
        self.on_pass(name, self.counts[name])

    def cancel_at(self, name: str, at: int, works: list[Work], cause: str = "client gone") -> None:
        """At pass `at` of `name`, cancel `works` the way the batcher does when their client leaves, or (cause
        "deadline") let their deadline pass."""

        def cancel(passed: str, n: int) -> None:
            if passed == name and n == at:
                for work in works:
                    if cause == "client gone":
                        work._future.cancel()
                    else:
                        work.deadline = time.monotonic()

        self.on_pass = cancel

    def pause(self, name: str, at: int) -> None:
        def hold(passed: str, n: int) -> None:
            if passed == name and n == at:
                self.reached.set()
                self.release.wait(30)

        self.on_pass = hold

    def remove(self) -> None:
        self.release.set()
        for handle in self._handles:
            handle.remove()


@pytest.fixture
def count_passes():
    """`count_passes(decoder=module, ...)` -> a `ForwardPasses`; its hooks are removed (and any pause released)
    when the test ends."""
    made: list[ForwardPasses] = []

    def make(**modules) -> ForwardPasses:
        made.append(ForwardPasses(**modules))
        return made[-1]

    yield make
    for passes in made:
        passes.remove()


@pytest.fixture
def queued_work():
    """`queued_work(job)` -> the batcher's `Work` for `job`, as a runner's predict call receives it (its future on
    an event loop of the test's own)."""
    loop = asyncio.new_event_loop()

    def make(job) -> Work:
        return Work(
            payload=job,
            key=job.batch_key,
            enqueued_at=time.monotonic(),
            deadline=None,
            _future=loop.create_future(),
            _loop=loop,
        )

    yield make
    loop.close()
