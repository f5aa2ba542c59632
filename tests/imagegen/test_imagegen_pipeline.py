"""The model runner without a server: shared weights, per-request schedulers, batching, chunking."""

import logging

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, PNDMScheduler, StableDiffusionPipeline
from diffusers.models.attention_processor import SlicedAttnProcessor
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from opentelemetry.trace import INVALID_SPAN
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

from services.imagegen.runner import (
    IMAGE_TO_IMAGE,
    INPAINT,
    TEXT_TO_IMAGE,
    ImageGenRunner,
    ImageJob,
    scheduler_name,
)


@pytest.fixture(scope="module")
def runner(make_settings):
    loaded = ImageGenRunner(make_settings(max_batch_images=4))
    loaded.load()
    return loaded


def job(prompt="a red house", seeds=(1,), task=TEXT_TO_IMAGE, scheduler="euler_ancestral", **kw) -> ImageJob:
    fields = dict(negative_prompt="", width=64, height=64, steps=4, guidance_scale=7.5, scheduler=scheduler)
    return ImageJob(task=task, prompt=prompt, seeds=tuple(seeds), **{**fields, **kw})


def as_array(generated) -> np.ndarray:
    return np.asarray(generated.image, dtype=np.int16)


def test_three_tasks_share_one_set_of_weights(runner):
    t2i, i2i, inpaint = (runner.pipelines[t] for t in (TEXT_TO_IMAGE, IMAGE_TO_IMAGE, INPAINT))
    view = runner.pipeline_for(INPAINT, "dpm++_2m")
    for component in ("unet", "vae", "text_encoder", "tokenizer"):
        shared = getattr(t2i, component)
        assert getattr(i2i, component) is shared and getattr(inpaint, component) is shared
        assert getattr(view, component) is shared
    # The per-request view got its own scheduler; the shared pipelines keep the checkpoint's.
    assert isinstance(view.scheduler, DPMSolverMultistepScheduler)
    assert all(isinstance(p.scheduler, PNDMScheduler) for p in runner.pipelines.values())


def test_switching_schedulers_changes_the_image_not_the_weights(runner):
    unet = runner.pipelines[TEXT_TO_IMAGE].unet
    weights = {name: p.data_ptr() for name, p in unet.named_parameters()}
    images = {
        name: as_array(runner.generate([job(scheduler=name)])[0][0]) for name in ("ddim", "euler", "dpm++_2m")
    }
    assert not np.array_equal(images["ddim"], images["euler"])
    assert not np.array_equal(images["euler"], images["dpm++_2m"])
    assert runner.pipelines[TEXT_TO_IMAGE].unet is unet
    assert {name: p.data_ptr() for name, p in unet.named_parameters()} == weights
    # Same scheduler again: the same pixels (the scheduler's state does not leak between calls).
    assert np.array_equal(as_array(runner.generate([job(scheduler="euler")])[0][0]), images["euler"])


def test_scheduler_names_accept_common_spellings():
    assert scheduler_name("DPM++ 2M") == "dpm++_2m"
    assert scheduler_name("euler-a") == "euler_ancestral"
    assert scheduler_name("Euler Ancestral") == "euler_ancestral"
    assert scheduler_name("k_dpm_9000") is None


@pytest.mark.parametrize("task", [TEXT_TO_IMAGE, IMAGE_TO_IMAGE, INPAINT])
def test_a_batch_gives_each_request_the_images_it_gets_alone(runner, task):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    extra = {} if task == TEXT_TO_IMAGE else {"image": source, "strength": 0.75}
    if task == INPAINT:
        extra["mask"] = mask
    jobs = [
        job("a red house", (11,), task=task, **extra),
        job("a blue boat", (22, 23), task=task, negative_prompt="blurry", **extra),
        job("a green tree", (33,), task=task, **extra),
    ]
    alone = [runner.generate([j])[0] for j in jobs]
    together = runner.generate(jobs)
    assert [len(images) for images in together] == [1, 2, 1]
    for solo_images, batched_images in zip(alone, together, strict=True):
        for solo, batched in zip(solo_images, batched_images, strict=True):
            assert batched.seed == solo.seed
            # Equal up to float rounding: batched kernels sum in another order (1e-6), which can flip
            # the rounding of a few pixel values by one level.
            difference = np.abs(as_array(batched) - as_array(solo))
            assert difference.max() <= 1 and (difference > 0).mean() < 0.02
    # ...while a different seed or prompt gives a clearly different image.
    assert np.abs(as_array(together[1][0]) - as_array(together[1][1])).mean() > 5
    assert np.abs(as_array(together[0][0]) - as_array(alone[2][0])).mean() > 5


def test_requests_beyond_max_batch_images_run_in_several_calls(runner):
    calls = []
    original = runner.generate

    def counting(jobs, on_step=None):
        calls.append(sum(j.n for j in jobs))
        return original(jobs, on_step)

    runner.generate = counting
    try:
        works = [_FakeWork(job(seeds=range(s, s + n))) for s, n in ((1, 2), (5, 2), (9, 1))]
        results = runner.predict_batch(works)
    finally:
        del runner.generate
    assert calls == [4, 1]  # max_batch_images=4
    assert [len(r) for r in results] == [2, 2, 1]
    assert [r.seed for r in results[1]] == [5, 6]


def test_previews_are_spread_over_the_steps():
    assert [job(partial_images=2).preview_index(s, 4) for s in range(1, 5)] == [None, 0, None, 1]
    assert [job(partial_images=9).preview_index(s, 3) for s in range(1, 4)] == [0, 1, 2]
    assert job(partial_images=0).preview_index(1, 3) is None


def test_gpu_switches_apply_to_the_shared_components_of_every_task(make_settings, runner):
    switched = ImageGenRunner(make_settings(attention_slicing="max", vae_tiling=True))
    switched.load()
    for pipe in switched.pipelines.values():
        assert all(isinstance(p, SlicedAttnProcessor) for p in pipe.unet.attn_processors.values())
        assert pipe.vae.use_tiling
    # Slicing trades speed for memory, not pixels; tiling kicks in above the VAE's 64-pixel tiles.
    sliced = as_array(switched.generate([job()])[0][0])
    assert np.abs(sliced - as_array(runner.generate([job()])[0][0])).max() <= 1
    assert switched.generate([job(width=128, height=128)])[0][0].image.size == (128, 128)


def test_half_precision_survives_building_the_other_tasks(make_settings):
    # from_pipe casts to float32 unless told otherwise: on a GPU that would double the memory.
    half = ImageGenRunner(make_settings(dtype="float16"))
    half.load()
    for pipe in half.pipelines.values():
        assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16


@pytest.fixture(scope="module")
def model_with_safety_checker(sd_model, tmp_path_factory):
    """The tiny checkpoint plus a tiny safety checker that flags every image (all concept thresholds < 0)."""
    pipe = StableDiffusionPipeline.from_pretrained(sd_model, use_safetensors=True)
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    checker = StableDiffusionSafetyChecker(
        CLIPConfig(
            text_config=tower, vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16
        )
    )
    checker.concept_embeds_weights.data.fill_(-10.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    target = tmp_path_factory.mktemp("sd") / "with-safety-checker"
    StableDiffusionPipeline(
        **{**pipe.components, "safety_checker": checker, "feature_extractor": extractor},
        requires_safety_checker=True,
    ).save_pretrained(target, safe_serialization=True)
    return target


@pytest.mark.parametrize("enabled", [True, False])
def test_safety_checker_on_or_off_by_configuration(make_settings, model_with_safety_checker, enabled):
    configured = ImageGenRunner(make_settings(model=str(model_with_safety_checker), safety_checker=enabled))
    configured.load()
    assert configured.safety_checker_active is enabled
    images = configured.generate([job(seeds=(1, 2))])[0]
    if enabled:  # flagged images come back black, and say so
        assert [(g.nsfw, np.asarray(g.image).max()) for g in images] == [(True, 0), (True, 0)]
    else:
        assert all(g.nsfw is None and np.asarray(g.image).max() > 0 for g in images)


def test_missing_safety_checker_is_reported_at_start_up(make_settings, caplog):
    runner = ImageGenRunner(make_settings(safety_checker=True))
    with caplog.at_level(logging.WARNING, logger="services.imagegen.runner"):
        runner.load()
    assert "safety checker is on" in caplog.text and "NOT filtered" in caplog.text
    assert runner.safety_checker_active is False


class _FakeWork:
    """What the batcher hands the runner, minus the event loop: a payload nobody cancelled."""

    def __init__(self, payload):
        self.payload = payload
        self.cancelled = False
        self.span = INVALID_SPAN  # tracing off

    def emit(self, event):
        pass
