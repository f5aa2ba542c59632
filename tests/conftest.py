"""Shared fixtures: the tiny offline models (built once if `make models` has not run)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    # Idempotent and quick when `make models` already ran (as `make test` does first).
    subprocess.run([sys.executable, "-m", "tools.tiny_models", "--out", str(MODELS)], check=True, cwd=REPO)
    return MODELS
