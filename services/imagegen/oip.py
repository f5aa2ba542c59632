"""Own module: OIP's reader (encoded or pixel images) and renderer (pixels, PNGs, previews) outgrow service.py.

Image generation over the Open Inference Protocol (v2), the model "imagegen". Text-to-image; image-to-image when a
source image is sent; inpainting when a mask comes with it.

Inputs (one datatype per name, so each form of an image has its own input):
- prompt        BYTES [1]        UTF-8 text.
- image         BYTES [1]        optional: an encoded PNG/JPEG/WebP, its header's size checked before decoding.
- image_pixels  UINT8 [H, W, 3]  optional: the same as RGB pixels, H x W bounded by the declared shape.
- mask          BYTES [1]        optional: an encoded mask (transparent pixels, or white in an opaque one, redraw).
- mask_pixels   UINT8 [H, W]     optional: a grey-scale mask, 255 redraws and 0 keeps.
Parameters: negative_prompt, n, steps, guidance_scale, seed, scheduler, width, height, strength (the gRPC
Generate fields, checked by the same schema), and partial_images over ModelStreamInfer only.
Outputs:
- images        UINT8 [N, H, W, 3]  the pixels.
- images_png    BYTES [N]           the same pixels as PNG files, byte for byte what REST's b64_json holds.
- seeds         INT64 [N]           image i's seed (seed + i): send it back to get the same pixels.
- nsfw_content_detected  BOOL [N]   only when the safety checker ran.
ModelStreamInfer answers `step`/`total_steps` after every denoising step, `partial_images` (latent-sized
previews, [N, H/8, W/8, 3]) when asked for, and then the outputs above. Each answer's parameters carry the task.
"""

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from services.kit.batcher import Done
from services.kit.oip import InferRequest, OipModel, Outputs, Parameter, Tensor
from services.kit.operations import Call, Operation, Upload

from .images import encode_image
from .runner import GeneratedImage, ImageGenRunner, Preview, Progress
from .schemas import Generation
from .settings import ImageGenSettings

MODEL_NAME = "imagegen"
PARAMETERS = [
    Parameter("negative_prompt", str),
    Parameter("n", int),
    Parameter("steps", int),
    Parameter("guidance_scale", float),
    Parameter("seed", int),
    Parameter("scheduler", str),
    Parameter("width", int),
    Parameter("height", int),
    Parameter("strength", float),
    Parameter("partial_images", int),
]


def oip_model(generate: Operation, runner: ImageGenRunner, settings: ImageGenSettings) -> OipModel:
    limit = settings.max_input_pixels
    inputs = [
        Tensor("prompt", "BYTES", (1,)),
        Tensor("image", "BYTES", (1,), optional=True),
        # The declared H x W is refused beyond the upload limit before any pixel is read.
        Tensor("image_pixels", "UINT8", (-1, -1, 3), max_elements=3 * limit, optional=True),
        Tensor("mask", "BYTES", (1,), optional=True),
        Tensor("mask_pixels", "UINT8", (-1, -1), max_elements=limit, optional=True),
    ]
    outputs = [
        Tensor("images", "UINT8", (-1, -1, -1, 3)),
        Tensor("images_png", "BYTES", (-1,), files=True),
        Tensor("seeds", "INT64", (-1,)),
        Tensor("nsfw_content_detected", "BOOL", (-1,)),
        Tensor("step", "INT32", (1,)),
        Tensor("total_steps", "INT32", (1,)),
        Tensor("partial_images", "UINT8", (-1, -1, -1, 3)),
    ]

    def to_fields(request: InferRequest, streamed: bool) -> dict:
        fields = {**request.parameters, "prompt": request.text_input("prompt")[0], "stream": streamed}
        for name in ("image", "mask"):
            encoded = request.bytes_input(name)
            if encoded is not None:
                fields[name] = Upload(data=encoded)
            pixels = request.inputs.get(f"{name}_pixels")
            if pixels is not None:
                fields[f"{name}_pixels"] = pixels
        return fields

    async def generated(call: Call[Generation]) -> Outputs:
        report_task(call)
        return await asyncio.to_thread(results, await call.result())

    async def generated_by_step(call: Call[Generation]) -> AsyncIterator[Outputs]:
        report_task(call)
        async for event in call.events():
            if isinstance(event, Progress):
                yield {"step": [event.step], "total_steps": [event.total_steps]}
            elif isinstance(event, Preview):
                yield {
                    "partial_images": stacked(event.images),
                    "step": [event.step],
                    "total_steps": [event.total_steps],
                }
            elif isinstance(event, Done):
                yield await asyncio.to_thread(results, event.result)

    return generate.oip_model(
        MODEL_NAME,
        inputs,
        outputs,
        to_fields=to_fields,
        parameters=PARAMETERS,
        answer=generated,
        stream=generated_by_step,
        output_sizes=output_sizes,
    )


def output_sizes(plan: Generation) -> dict[str, int]:
    """What n, width and height make of the response: pixels, and PNG files no larger than their pixels plus a
    filter byte per row and zlib's stored-block overhead (bounded by one byte per pixel here)."""
    job = plan.job
    count, pixels = len(job.seeds), job.width * job.height
    return {
        "images": count * pixels * 3,
        "images_png": count * (pixels * 4 + 1024),
        "seeds": count,
        "nsfw_content_detected": count,
    }


def report_task(call: Call[Generation]) -> None:
    call.origin.response_parameters["task"] = call.plan.job.task


def stacked(images) -> np.ndarray:
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


def results(images: list[GeneratedImage]) -> Outputs:
    produced: Outputs = {
        "images": stacked(generated.image for generated in images),
        "images_png": [encode_image(generated.image, "png") for generated in images],
        "seeds": np.array([generated.seed for generated in images], dtype=np.int64),
    }
    if images and images[0].nsfw is not None:
        produced["nsfw_content_detected"] = np.array([generated.nsfw for generated in images], dtype=np.bool_)
    return produced
