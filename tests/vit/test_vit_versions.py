"""The version poller against readers on another thread (the event loop answering GetModelStatus)."""

import logging
import sys
import threading
import time

import pytest

from services.vit import runner as runner_module
from services.vit.runner import ViTRunner
from services.vit.settings import ViTSettings

MODEL = "churn"
VERSIONS_PER_SCAN = 40


class FailingServable:
    """A version whose SavedModel does not load: the poller records it as failed."""

    def __init__(self, name, version, path):
        raise OSError(f"{path} is not a SavedModel")


@pytest.fixture
def fast_thread_switches():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the race needs a switch inside a dict iteration: make switches constant
    yield
    sys.setswitchinterval(interval)


def test_status_reads_never_race_the_poller(tmp_path, monkeypatch, caplog, fast_thread_switches):
    caplog.set_level(logging.CRITICAL, logger=runner_module.__name__)
    monkeypatch.setattr(runner_module, "Servable", FailingServable)
    runner = ViTRunner(ViTSettings(model_base=tmp_path, model_name=MODEL, poll_interval_s=0))
    model_dir = tmp_path / MODEL
    stop = threading.Event()

    def poll():
        # Each scan finds a new set of broken versions (recorded as failed) and loses the previous set.
        round_ = 0
        while not stop.is_set():
            round_ += 1
            for version in range(round_ * VERSIONS_PER_SCAN, (round_ + 1) * VERSIONS_PER_SCAN):
                (model_dir / str(version)).mkdir(parents=True)
                (model_dir / str(version) / "saved_model.pb").write_bytes(b"")
            for old in model_dir.iterdir():
                if int(old.name) < round_ * VERSIONS_PER_SCAN:
                    (old / "saved_model.pb").unlink()
                    old.rmdir()
            runner.scan(warmup=False)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    reads, deadline = 0, time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            try:
                states = runner.version_states(MODEL)
            except runner_module.NotFound:
                continue  # before the first scan
            assert all(not state.available and state.error for state in states)
            reads += 1
    finally:
        stop.set()
        poller.join(timeout=30)
    assert reads > 100
