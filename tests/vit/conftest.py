"""Shared ViT serving fixtures: one TF Serving-compatible server per session over the tiny ViT, which the
server itself exports from the Hugging Face checkpoint at start-up (as `make serve` does)."""

import io

import numpy as np
import pytest
from PIL import Image

from services.kit.testing import ServerThread
from services.vit.server import create_service
from services.vit.settings import ViTSettings


@pytest.fixture(scope="session")
def vit_checkpoint(models_dir):
    path = models_dir / "vit" / "hf-vit"
    assert (path / "model.safetensors").is_file(), (
        f"tiny ViT missing at {path}: run python -m tools.tiny_models"
    )
    return path


@pytest.fixture(scope="session")
def vit_server(vit_checkpoint, tmp_path_factory):
    settings = ViTSettings(
        model_base=tmp_path_factory.mktemp("vit-serving"),
        checkpoint=str(vit_checkpoint),
        poll_interval_s=0.5,
        allow_reload=True,  # tests/vit/test_vit_hostile_examples.py sends hostile reloads
        # Long enough that concurrent test requests reliably share a batch.
        max_wait_ms=40, wait_when_idle=True,
        threads=1,
    )
    server = ServerThread(lambda: [create_service(settings)], settings)
    with server:
        yield server
    server.services[0].runner.close()


def _make_image(height: int, width: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    """Gradients plus noise: photo-like enough for JPEG, different enough per seed to change predictions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    shapes = [(64, 64, "PNG"), (120, 90, "JPEG"), (300, 200, "PNG"), (224, 224, "JPEG"), (50, 170, "BMP")]
    return [_make_image(h, w, fmt, seed) for seed, (h, w, fmt) in enumerate(shapes)]


@pytest.fixture(scope="session")
def make_image():
    return _make_image
