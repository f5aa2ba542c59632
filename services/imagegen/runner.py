"""Stable Diffusion runner: one set of weights serves text-to-image, image-to-image and inpainting.

No web code. The three diffusers pipelines are built once from the same loaded components
(`from_pipe`); each call gets a throw-away view of them with its own freshly configured scheduler,
so schedulers switch per request without reloading weights or touching the shared pipelines.
"""

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image
from prometheus_client import Counter, Gauge

from services.kit.batcher import Work
from services.kit.errors import Cancelled
from services.kit.torch_models import StopWhenCancelled, TorchRuntime, pretrained_kwargs, resolve_source

from .settings import ImageGenSettings

log = logging.getLogger(__name__)

TEXT_TO_IMAGE, IMAGE_TO_IMAGE, INPAINT = "text-to-image", "image-to-image", "inpaint"
PIPELINES = {
    TEXT_TO_IMAGE: StableDiffusionPipeline,
    IMAGE_TO_IMAGE: StableDiffusionImg2ImgPipeline,
    INPAINT: StableDiffusionInpaintPipeline,
}
# The diffusers defaults: image-to-image keeps some of the source, inpainting redraws the masked area.
DEFAULT_STRENGTH = {IMAGE_TO_IMAGE: 0.8, INPAINT: 1.0}

# Request name -> (scheduler class, config overrides). "default" is the checkpoint's own scheduler.
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "dpm++_2m": (DPMSolverMultistepScheduler, {}),
    "dpm++_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
}
DEFAULT_SCHEDULER = "default"
SCHEDULER_ALIASES = {
    "euler_a": "euler_ancestral",
    "dpmpp_2m": "dpm++_2m",
    "dpmpp_2m_karras": "dpm++_2m_karras",
}

# Stable Diffusion 1.x/2.x latents -> approximate RGB: the linear fit live previews commonly use
# (ComfyUI, A1111), a matrix product instead of a VAE decode.
LATENT_RGB = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)

# What one image's VAE decode costs, in denoising steps of the same image (bench/bench_costs.py).
DECODE_STEP_EQUIVALENTS = 4

STEPS = Counter(
    "imagegen_denoising_steps_total",
    "Denoising steps executed (one per pipeline step, whatever the batch)",
    ["task"],
)
IMAGES = Counter("imagegen_images_total", "Images generated", ["task"])
INTERRUPTED = Counter(
    "imagegen_interrupted_total",
    "Pipeline calls stopped early (remaining steps, VAE decode and post-processing skipped) because every caller "
    "had gone",
)
STEPS_PER_SECOND = Gauge("imagegen_denoising_steps_per_second", "Denoising steps per second of the last call")
IMAGES_PER_SECOND = Gauge("imagegen_images_per_second", "Images per second of the last pipeline call")


def scheduler_name(name: str) -> str | None:
    """The canonical name for "DPM++ 2M", "euler-a" and friends; None when unknown."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    key = SCHEDULER_ALIASES.get(key, key)
    return key if key in SCHEDULERS or key == DEFAULT_SCHEDULER else None


def scheduler_names() -> list[str]:
    return [DEFAULT_SCHEDULER, *SCHEDULERS]


@dataclass(frozen=True)
class ImageJob:
    """One request: `len(seeds)` images. Requests batch together when `batch_key` matches."""

    task: str
    prompt: str
    negative_prompt: str
    seeds: tuple[int, ...]
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    strength: float | None = None
    image: Image.Image | None = field(default=None, compare=False, repr=False)
    mask: Image.Image | None = field(default=None, compare=False, repr=False)
    partial_images: int = 0

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def cost(self) -> float:
        """The job's work in 512x512-image denoising steps: images x pixels / 512^2 x (steps actually run + the
        VAE decode). An edit runs strength x steps; the decode costs about DECODE_STEP_EQUIVALENTS steps (measured
        by bench/bench_costs.py: unpriced, 4 images of 1024x1024 at 2 steps cost 5x more per unit than 50 steps)."""
        steps = self.steps if self.strength is None else max(1, int(self.steps * self.strength))
        return self.n * self.width * self.height / (512 * 512) * (steps + DECODE_STEP_EQUIVALENTS)

    @property
    def batch_key(self) -> tuple:
        # Guidance is one scalar per pipeline call, so it belongs here; prompts go in as lists.
        return (
            self.task,
            self.width,
            self.height,
            self.steps,
            self.scheduler,
            self.guidance_scale,
            self.strength,
        )

    def preview_index(self, step: int, total: int) -> int | None:
        """Which partial image (0-based) step `step` of `total` produces, if any: spread evenly."""
        count = min(self.partial_images, total)
        if count == 0:
            return None
        steps = sorted({max(1, round(total * i / count)) for i in range(1, count + 1)})
        return steps.index(step) if step in steps else None


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int


@dataclass(frozen=True)
class Preview:
    """Cheap previews of a request's images, decoded from the latents of one step."""

    index: int
    step: int
    total_steps: int
    images: tuple[Image.Image, ...]


@dataclass(frozen=True)
class GeneratedImage:
    image: Image.Image
    seed: int
    nsfw: bool | None  # None when no safety checker ran


# (step, total_steps, latents) -> True to stop the denoising loop
StepListener = Callable[[int, int, torch.Tensor], bool]


def latents_to_previews(latents: torch.Tensor) -> list[Image.Image]:
    rgb = torch.einsum("bchw,cr->bhwr", latents.float(), LATENT_RGB.to(latents.device))
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(array) for array in pixels]


class ImageGenRunner:
    def __init__(self, settings: ImageGenSettings):
        self.settings = settings
        self.runtime: TorchRuntime | None = None
        self.pipelines: dict[str, DiffusionPipeline] = {}

    def load(self) -> None:
        s = self.settings
        if s.default_scheduler is not None and scheduler_name(s.default_scheduler) is None:
            raise ValueError(
                f"IMAGEGEN_DEFAULT_SCHEDULER={s.default_scheduler!r}; known: {scheduler_names()}"
            )
        self.runtime = TorchRuntime(s.device, s.dtype, s.threads, s.few_row_linears)
        source = resolve_source(s.model)
        options = pretrained_kwargs(self.runtime.dtype)
        if s.variant:
            options["variant"] = s.variant
        if not s.safety_checker:
            options.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        base = StableDiffusionPipeline.from_pretrained(source, **options).to(self.runtime.device)
        if s.safety_checker and base.safety_checker is None:
            log.warning(
                "safety checker is on (IMAGEGEN_SAFETY_CHECKER) but %s has none: images are NOT filtered",
                source,
            )
        if s.attention_slicing != "off":
            base.enable_attention_slicing(
                int(s.attention_slicing) if s.attention_slicing.isdigit() else s.attention_slicing
            )
        if s.vae_tiling:
            base.vae.enable_tiling()
        if s.compile_unet:
            base.unet.compile(mode=s.compile_mode)  # in place: every pipeline view shares the compiled UNet
        # from_pipe casts to its dtype argument (float32 when absent): pass ours or fp16 weights get upcast.
        self.pipelines = {
            task: base if cls is StableDiffusionPipeline else cls.from_pipe(base, dtype=self.runtime.dtype)
            for task, cls in PIPELINES.items()
        }
        log.info("loaded %s (%s) for %s", source, type(base.scheduler).__name__, ", ".join(self.pipelines))

    @property
    def model_name(self) -> str:
        path = Path(self.settings.model)
        return path.name if path.is_dir() else self.settings.model

    @property
    def native_size(self) -> tuple[int, int]:
        """The resolution the checkpoint was trained at (512x512 for SD 1.5)."""
        base = self.pipelines[TEXT_TO_IMAGE]
        side = base.unet.config.sample_size * base.vae_scale_factor
        return side, side

    @property
    def max_steps(self) -> int:
        """Schedulers cannot take more steps than the timesteps the model was trained on (1000)."""
        return min(
            self.settings.max_steps, self.pipelines[TEXT_TO_IMAGE].scheduler.config.num_train_timesteps
        )

    @property
    def safety_checker_active(self) -> bool:
        return self.pipelines[TEXT_TO_IMAGE].safety_checker is not None

    def default_scheduler(self) -> str:
        return scheduler_name(self.settings.default_scheduler or DEFAULT_SCHEDULER)

    def warmup(self) -> None:
        """Two steps of each task at the native size: allocations, kernel choice (and compilation) happen here."""
        width, height = self.native_size
        grey, everything = (
            Image.new("RGB", (width, height), (128, 128, 128)),
            Image.new("L", (width, height), 255),
        )
        for task in PIPELINES:
            edit = task != TEXT_TO_IMAGE
            job = ImageJob(
                task=task,
                prompt="warm up",
                negative_prompt="",
                seeds=(0,),
                width=width,
                height=height,
                steps=2,
                guidance_scale=self.settings.default_guidance_scale,
                scheduler=self.default_scheduler(),
                strength=1.0 if edit else None,
                image=grey if edit else None,
                mask=everything if task == INPAINT else None,
            )
            self.generate([job])

    def pipeline_for(self, task: str, scheduler: str) -> DiffusionPipeline:
        """A per-call view of the shared components with a fresh scheduler (schedulers keep per-call state)."""
        shared = self.pipelines[task]
        config = shared.scheduler.config
        if scheduler == DEFAULT_SCHEDULER:
            fresh = type(shared.scheduler).from_config(config)
        else:
            cls, overrides = SCHEDULERS[scheduler]
            fresh = cls.from_config(config, **overrides)
        view = type(shared)(
            **{**shared.components, "scheduler": fresh},
            requires_safety_checker=shared.config.requires_safety_checker,
        )
        view.set_progress_bar_config(disable=True)
        return view

    def generate(
        self, jobs: list[ImageJob], on_step: StepListener | None = None
    ) -> list[list[GeneratedImage]]:
        """One pipeline call for jobs sharing a batch key: one prompt and one generator per image.

        Each image's noise comes from its own CPU generator seeded with its seed, so an image does not
        depend on what it was batched with (up to float rounding) nor on the device.
        """
        first = jobs[0]
        pipe = self.pipeline_for(first.task, first.scheduler)
        prompts = [job.prompt for job in jobs for _ in job.seeds]
        inputs = dict(
            prompt=prompts,
            negative_prompt=[job.negative_prompt for job in jobs for _ in job.seeds],
            generator=[torch.Generator("cpu").manual_seed(seed) for job in jobs for seed in job.seeds],
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            output_type="pil",
        )
        if first.task == IMAGE_TO_IMAGE:
            inputs.update(image=[job.image for job in jobs for _ in job.seeds], strength=first.strength)
        else:
            inputs.update(width=first.width, height=first.height)
        if first.task == INPAINT:
            inputs.update(
                image=[job.image for job in jobs for _ in job.seeds],
                mask_image=[job.mask for job in jobs for _ in job.seeds],
                strength=first.strength,
            )
        executed = 0

        def step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            nonlocal executed
            executed += 1
            STEPS.labels(first.task).inc()
            if on_step is not None and on_step(step + 1, pipe.num_timesteps, tensors["latents"]):
                # Leaves the pipeline call: diffusers' own interrupt flag would skip the remaining steps but still
                # VAE-decode (and safety-check) every image for nobody.
                raise Cancelled(f"all {len(jobs)} requests of the pipeline call were cancelled")
            return tensors

        started = time.perf_counter()
        try:
            output = pipe(**inputs, callback_on_step_end=step_end)
        except Cancelled:
            INTERRUPTED.inc()
            raise
        elapsed = time.perf_counter() - started
        STEPS_PER_SECOND.set(executed / elapsed)
        IMAGES.labels(first.task).inc(len(prompts))
        IMAGES_PER_SECOND.set(len(prompts) / elapsed)
        flags = output.nsfw_content_detected or [None] * len(prompts)
        results, offset = [], 0
        for job in jobs:
            results.append(
                [
                    GeneratedImage(output.images[offset + i], seed, flags[offset + i])
                    for i, seed in enumerate(job.seeds)
                ]
            )
            offset += job.n
        return results

    def predict_batch(self, works: list[Work]) -> list[list[GeneratedImage] | Exception]:
        """Works share a batch key; they run in as few pipeline calls as max_batch_images allows."""
        results: list[list[GeneratedImage] | Exception] = []
        for chunk in self._chunks(works):
            if all(work.cancelled for work in chunk):
                results.extend(Cancelled("request cancelled before it started") for _ in chunk)
                continue
            try:
                with self._checked_for_cancellation(chunk):
                    results.extend(self.generate([work.payload for work in chunk], self._listener(chunk)))
            except Cancelled as exc:  # every caller of the chunk left: nothing to answer, nothing to log
                results.extend(exc for _ in chunk)
            except Exception as exc:  # this call failed (e.g. out of memory); other chunks still answer
                log.exception("generation of %d requests failed", len(chunk))
                results.extend(exc for _ in chunk)
        return results

    @contextlib.contextmanager
    def _checked_for_cancellation(self, works: list[Work]) -> Iterator[None]:
        """Checks the works before every block of the UNet and every ResNet block of the VAE decoder: a denoising
        step or a decode (seconds each for large images on a CPU) stops within a block once every caller has
        gone, instead of at the end of the step or never."""
        stop = StopWhenCancelled(works)
        pipeline = self.pipelines[TEXT_TO_IMAGE]  # every pipeline view shares these modules
        unet, decoder = pipeline.unet, pipeline.vae.decoder
        blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
        blocks += [resnet for block in [decoder.mid_block, *decoder.up_blocks] for resnet in block.resnets]
        with contextlib.ExitStack() as checks:
            for block in blocks:
                if block is not None:
                    checks.enter_context(stop.checked_before(block))
            yield

    def _chunks(self, works: list[Work]) -> list[list[Work]]:
        chunks, current, images = [], [], 0
        for work in works:
            if current and images + work.payload.n > self.settings.max_batch_images:
                chunks.append(current)
                current, images = [], 0
            current.append(work)
            images += work.payload.n
        return [*chunks, current] if current else chunks

    @staticmethod
    def _listener(works: list[Work]) -> StepListener:
        """Progress and previews to each caller still waiting; stop once none is."""

        def on_step(step: int, total: int, latents: torch.Tensor) -> bool:
            waiting, offset = False, 0
            for work in works:
                job: ImageJob = work.payload
                if not work.cancelled:
                    waiting = True
                    work.emit(Progress(step, total))
                    work.span.add_event("denoising_step", {"step": step, "total_steps": total})
                    index = job.preview_index(step, total)
                    if index is not None:
                        previews = latents_to_previews(latents[offset : offset + job.n])
                        work.emit(Preview(index, step, total, tuple(previews)))
                offset += job.n
            return not waiting

        return on_step
