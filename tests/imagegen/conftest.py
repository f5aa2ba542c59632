"""Fixtures for the image generation tests: the tiny Stable Diffusion checkpoint and helpers around it."""

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from services.imagegen.settings import ImageGenSettings

# One thread per model: the machine is shared and oversubscribed OpenMP threads spin instead of working.
THREADS = 1


@pytest.fixture(scope="session")
def sd_model(models_dir) -> Path:
    return models_dir / "imagegen" / "stable-diffusion"


@pytest.fixture(scope="session")
def make_settings(sd_model):
    def make(**overrides) -> ImageGenSettings:
        options = dict(
            model=str(sd_model), safety_checker=False, default_steps=4, threads=THREADS, log_level="warning"
        )
        return ImageGenSettings(**{**options, **overrides})

    return make


@pytest.fixture(scope="session")
def reference(sd_model) -> StableDiffusionPipeline:
    """diffusers called directly, the way its documentation shows, for pixel-for-pixel comparisons.

    With the servers' thread count: float sums split over more threads round differently.
    """
    torch.set_num_threads(THREADS)
    pipe = StableDiffusionPipeline.from_pretrained(sd_model, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def pixels():
    """Image bytes (or base64 text) -> uint8 array."""

    def decode(data: bytes | str) -> np.ndarray:
        raw = base64.b64decode(data) if isinstance(data, str) else data
        return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))

    return decode


@pytest.fixture(scope="session")
def steps_executed():
    """Denoising steps the server has run so far, read from its /metrics like a monitoring system would."""

    def read(rest_url: str) -> float:
        text = httpx.get(rest_url + "/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "imagegen_denoising_steps"
            for sample in family.samples
            if sample.name == "imagegen_denoising_steps_total"
        )

    return read
