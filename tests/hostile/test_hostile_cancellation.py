"""Abandoned image generations stop entirely, and free the model thread that every service shares.

Measured before: an imagegen request of n=4, 1024x1024, 50 steps whose client left at 3 s skipped its remaining
steps but still VAE-decoded every image; an unrelated translation waited 24-60 s (once 504). Here imagegen and
translation share one model thread (the compute arbiter of the all-in-one platform), as `make serve` runs them.
"""

import time

import httpx
import pytest

from services.imagegen.service import create_service as create_imagegen
from services.imagegen.settings import ImageGenSettings
from services.kit.testing import ServerThread
from services.translation.service import create_service as create_translation
from services.translation.settings import TranslationSettings
from tests.hostile.leaving import post_and_leave

STEPS = 6
GENERATION = {"prompt": "a lighthouse at dusk", "n": 2, "size": "64x64", "steps": STEPS, "response_format": "b64_json"}


@pytest.fixture(scope="module")
def server(models_dir):
    imagegen = ImageGenSettings(model=str(models_dir / "imagegen" / "stable-diffusion"), safety_checker=False,
                                threads=1, max_wait_ms=0, log_level="warning")
    translation = TranslationSettings(models={"en-de": str(models_dir / "translation" / "wmt19-en-de")}, threads=1,
                                      log_level="warning")
    with ServerThread(lambda: [create_imagegen(imagegen), create_translation(translation)], imagegen) as running:
        yield running


@pytest.fixture
def pipeline(server):
    return server.services[0].runner.pipelines["text-to-image"]


def generate_and_leave(server, passes) -> None:
    """POST a generation, leave once the model thread is paused in it, release it once the server has noticed."""
    request = httpx.Request("POST", server.rest_url + "/v1/images/generations", json=GENERATION)
    post_and_leave(server, request, passes, notice_s=30)


def wait_idle(server) -> None:
    deadline = time.monotonic() + 60
    while any(batcher.busy for service in server.services for batcher in service.batchers):
        assert time.monotonic() < deadline, "the model thread is still busy"
        time.sleep(0.01)


def assert_translation_served(server) -> None:
    response = httpx.post(server.rest_url + "/v1/translate", timeout=60,
                          json={"text": "Hello world.", "source_lang": "en", "target_lang": "de", "max_new_tokens": 8})
    assert response.status_code == 200, response.text


def test_an_image_abandoned_at_its_last_step_is_never_vae_decoded(server, pipeline, count_passes):
    passes = count_passes(unet=pipeline.unet, vae_decoder=pipeline.vae.decoder)
    passes.pause("unet", STEPS)  # the last denoising step
    generate_and_leave(server, passes)
    wait_idle(server)
    assert passes.unet == STEPS
    assert passes.vae_decoder == 0, "the images of a request nobody waits for were decoded"
    assert_translation_served(server)


def test_a_vae_decode_whose_client_leaves_frees_the_shared_model_thread_within_a_block(server, pipeline, count_passes):
    blocks = pipeline.vae.decoder.up_blocks
    passes = count_passes(**{f"up_block_{i}": block for i, block in enumerate(blocks)})
    passes.pause("up_block_0", 1)  # the client leaves while its images are being decoded
    generate_and_leave(server, passes)
    wait_idle(server)
    later = [getattr(passes, f"up_block_{i}") for i in range(1, len(blocks))]
    assert later[0] <= 1 and sum(later[1:]) == 0, f"{later} passes of the later decoder blocks for nobody"
    assert_translation_served(server)

