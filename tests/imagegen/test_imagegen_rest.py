"""The OpenAI-compatible REST API against a real server, driven by the official openai SDK and by httpx."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from openai import BadRequestError, NotFoundError, OpenAI
from PIL import Image

from services.imagegen.service import create_service
from services.kit.testing import ServerThread


@pytest.fixture(scope="module")
def server(make_settings):
    settings = make_settings(max_wait_ms=0, max_images=3)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.rest_url + "/v1", api_key="unused", max_retries=0)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


SOURCE = Image.fromarray(np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def test_sdk_generate_equals_diffusers_called_directly(client, reference, pixels):
    result = client.images.generate(
        prompt="a lighthouse at dusk",
        size="64x64",
        extra_body={
            "seed": 1234,
            "steps": 5,
            "guidance_scale": 6.0,
            "scheduler": "euler_ancestral",
            "negative_prompt": "fog",
        },
    )
    assert result.size == "64x64" and result.output_format == "png" and len(result.data) == 1
    served = pixels(result.data[0].b64_json)

    scheduler = EulerAncestralDiscreteScheduler.from_config(reference.scheduler.config)
    direct_pipe = StableDiffusionPipeline.from_pipe(reference, scheduler=scheduler)
    direct = direct_pipe(
        "a lighthouse at dusk",
        negative_prompt="fog",
        num_inference_steps=5,
        guidance_scale=6.0,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(1234),
    ).images[0]
    assert np.array_equal(served, np.asarray(direct))

    again = client.images.generate(
        prompt="a lighthouse at dusk",
        size="64x64",
        extra_body={
            "seed": 1234,
            "steps": 5,
            "guidance_scale": 6.0,
            "scheduler": "euler_ancestral",
            "negative_prompt": "fog",
        },
    )
    assert np.array_equal(pixels(again.data[0].b64_json), served)
    other_seed = client.images.generate(
        prompt="a lighthouse at dusk",
        size="64x64",
        extra_body={
            "seed": 1235,
            "steps": 5,
            "guidance_scale": 6.0,
            "scheduler": "euler_ancestral",
            "negative_prompt": "fog",
        },
    )
    assert not np.array_equal(pixels(other_seed.data[0].b64_json), served)


def test_n_images_use_consecutive_seeds(client, pixels):
    three = client.images.generate(prompt="a cat", n=3, size="64x64", extra_body={"seed": 40})
    assert [d.seed for d in three.data] == [40, 41, 42]
    third_alone = client.images.generate(prompt="a cat", size="64x64", extra_body={"seed": 42})
    difference = np.abs(pixels(three.data[2].b64_json).astype(int) - pixels(third_alone.data[0].b64_json))
    assert difference.max() <= 1  # batch of 3 vs 1: equal up to float rounding
    unseeded = client.images.generate(prompt="a cat", size="64x64")
    assert isinstance(unseeded.data[0].seed, int)  # a random seed, reported so the image can be reproduced


def test_sdk_edit_without_mask_is_image_to_image(client, reference, pixels):
    result = client.images.edit(
        image=("source.png", png(SOURCE), "image/png"),
        prompt="an oil painting",
        extra_body={"seed": 9, "steps": 10, "strength": 0.6, "scheduler": "dpm++ 2m"},
    )
    assert result.size == "64x64"
    direct_pipe = StableDiffusionImg2ImgPipeline.from_pipe(reference)
    direct_pipe.scheduler = DPMSolverMultistepScheduler.from_config(direct_pipe.scheduler.config)
    direct = direct_pipe(
        "an oil painting",
        image=SOURCE,
        strength=0.6,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(9),
    ).images[0]
    assert np.array_equal(pixels(result.data[0].b64_json), np.asarray(direct))


def test_sdk_edit_with_mask_inpaints_the_transparent_area(client, reference, pixels):
    # OpenAI's mask convention: transparent pixels are the ones to redraw (here the left half).
    transparent_left = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    transparent_left.paste((0, 0, 0, 0), (0, 0, 32, 64))
    result = client.images.edit(
        image=("source.png", png(SOURCE), "image/png"),
        mask=("mask.png", png(transparent_left), "image/png"),
        prompt="a window",
        extra_body={"seed": 5, "steps": 4},
    )
    white_left = Image.new("L", (64, 64), 0)  # the diffusers convention: white = redraw
    white_left.paste(255, (0, 0, 32, 64))
    direct_pipe = StableDiffusionInpaintPipeline.from_pipe(reference)
    direct = direct_pipe(
        "a window",
        image=SOURCE,
        mask_image=white_left,
        num_inference_steps=4,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(5),
    ).images[0]
    served = pixels(result.data[0].b64_json)
    assert np.array_equal(served, np.asarray(direct))
    # An opaque grey-scale mask in the diffusers convention means the same thing.
    same = client.images.edit(
        image=("source.png", png(SOURCE), "image/png"),
        mask=("mask.png", png(white_left), "image/png"),
        prompt="a window",
        extra_body={"seed": 5, "steps": 4},
    )
    assert np.array_equal(pixels(same.data[0].b64_json), served)


@pytest.mark.parametrize("fmt, pil_format", [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_output_formats(server, fmt, pil_format):
    response = httpx.post(
        server.rest_url + "/v1/images/generations",
        json={"prompt": "a tree", "output_format": fmt, "size": "64x64", "seed": 1},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["output_format"] == fmt
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    assert image.format == pil_format and image.size == (64, 64)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "x", "size": "60x64"}, "size"),
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "size": "4096x4096"}, "size"),
        ({"prompt": "x", "n": 4}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "steps": 151}, "steps"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x", "guidance_scale": 99}, "guidance_scale"),
        ({"prompt": "x", "seed": -5}, "seed"),
        ({"prompt": "x", "scheduler": "k_dpm_9000"}, "scheduler"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "output_compression": 50}, "output_compression"),
        ({"prompt": "x", "model": "gpt-image-1", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "partial_images": 200, "stream": True}, "partial_images"),
        ({"prompt": "x", "strength": 0.5}, "strength"),
        ({"prompt": "   "}, "prompt"),
        ({"size": "64x64"}, "prompt"),
    ],
)
def test_bad_values_get_400_naming_the_field(server, body, field):
    response = httpx.post(server.rest_url + "/v1/images/generations", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"]


def test_sdk_sees_openai_errors(client):
    with pytest.raises(BadRequestError, match="response_format"):
        client.images.generate(prompt="x", model="gpt-image-1", response_format="url")
    with pytest.raises(NotFoundError, match="dall-e-9"):
        client.images.generate(prompt="x", model="dall-e-9")
    served = client.images.generate(prompt="x", model="stable-diffusion", size="64x64")
    assert len(served.data) == 1


@pytest.mark.parametrize(
    "files, data, status, field",
    [
        ({"image": ("a.png", b"not an image", "image/png")}, {"prompt": "x"}, 415, "image"),
        ({"image": ("a.png", b"", "image/png")}, {"prompt": "x"}, 400, "image"),
        ({"mask": ("m.png", png(SOURCE), "image/png")}, {"prompt": "x"}, 400, "image"),
        (
            {
                "image": ("a.png", png(SOURCE), "image/png"),
                "mask": ("m.png", png(SOURCE.resize((32, 32))), "image/png"),
            },
            {"prompt": "x"},
            400,
            "mask",
        ),
        ({"image": ("a.png", png(SOURCE.resize((40, 64))), "image/png")}, {"prompt": "x"}, 400, "image"),
        ({"image": ("a.png", png(SOURCE), "image/png")}, {"prompt": "x", "size": "64x60"}, 400, "size"),
        ({"image": ("a.png", png(SOURCE), "image/png")}, {"prompt": "x", "strength": "1.5"}, 400, "strength"),
        (
            {"image": ("a.png", png(SOURCE), "image/png")},
            {"prompt": "x", "strength": "0.1", "steps": "4"},
            400,
            "strength",
        ),
        (
            {"image": ("a.png", png(SOURCE), "image/png"), "photo": ("b.png", png(SOURCE), "image/png")},
            {"prompt": "x"},
            400,
            "photo",
        ),
    ],
)
def test_bad_edits_get_errors_naming_the_field(server, files, data, status, field):
    response = httpx.post(server.rest_url + "/v1/images/edits", files=files, data=data, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == field


def test_edits_take_multipart_or_json(server):
    response = httpx.post(
        server.rest_url + "/v1/images/edits",
        content=b"prompt=x",
        headers={"content-type": "text/plain"},
        timeout=30,
    )
    assert response.status_code == 415
    response = httpx.post(server.rest_url + "/v1/images/edits", json={"prompt": "x"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "images"


def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_stream_reports_every_step_then_the_image(server, pixels):
    body = {
        "prompt": "a boat",
        "stream": True,
        "stream_progress": True,
        "steps": 6,
        "scheduler": "euler",
        "seed": 77,
        "size": "64x64",
        "partial_images": 2,
        "n": 2,
    }
    with httpx.stream("POST", server.rest_url + "/v1/images/generations", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    names = [name for name, _ in events]
    progress = [data for name, data in events if name == "image_generation.progress"]
    assert [(p["step"], p["total_steps"]) for p in progress] == [(i, 6) for i in range(1, 7)]
    previews = [data for name, data in events if name == "image_generation.partial_image"]
    assert [(p["partial_image_index"], p["image_index"], p["step"]) for p in previews] == [
        (0, 0, 3),
        (0, 1, 3),
        (1, 0, 6),
        (1, 1, 6),
    ]
    assert pixels(previews[0]["b64_json"]).shape == (8, 8, 3)  # latent resolution: cheap, no VAE decode
    completed = [data for name, data in events if name == "image_generation.completed"]
    assert names[-2:] == ["image_generation.completed"] * 2
    assert [c["seed"] for c in completed] == [77, 78]
    unary = httpx.post(
        server.rest_url + "/v1/images/generations",
        json={**body, "stream": False, "stream_progress": False, "partial_images": 0},
        timeout=60,
    ).json()
    assert np.array_equal(pixels(completed[0]["b64_json"]), pixels(unary["data"][0]["b64_json"]))


def test_sdk_streams_generations_and_edits(client):
    events = list(
        client.images.generate(
            prompt="a boat",
            size="64x64",
            stream=True,
            partial_images=1,
            extra_body={"steps": 3, "scheduler": "euler", "stream_progress": True},
        )
    )
    assert [e.type for e in events] == [
        "image_generation.progress",
        "image_generation.progress",
        "image_generation.progress",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert events[-1].b64_json and events[-1].size == "64x64"
    edits = list(
        client.images.edit(
            image=("s.png", png(SOURCE), "image/png"),
            prompt="a boat",
            stream=True,
            extra_body={"steps": 4, "strength": 0.5, "scheduler": "euler", "stream_progress": True},
        )
    )
    assert [e.type for e in edits] == ["image_edit.progress"] * 2 + ["image_edit.completed"]


def test_models_lists_tasks_and_schedulers(server):
    models = httpx.get(server.rest_url + "/v1/models", timeout=10).json()["data"]
    entry = next(m for m in models if m["service"] == "imagegen")
    assert entry["id"] == "stable-diffusion" and entry["default_size"] == "64x64"
    assert entry["tasks"] == ["text-to-image", "image-to-image", "inpaint"]
    assert {"ddim", "pndm", "euler", "euler_ancestral", "lms", "dpm++_2m"} <= set(entry["schedulers"])
    assert entry["safety_checker"] is False


def test_form_parts_the_edits_route_does_not_read_are_refused_by_name(server):
    source = ("a.png", png(SOURCE), "image/png")
    markup = httpx.post(
        server.rest_url + "/v1/images/edits",
        files={"image": source, "markup": ("m.png", png(SOURCE), "image/png")},
        data={"prompt": "x"},
        timeout=30,
    )
    assert markup.status_code == 400, markup.text
    error = markup.json()["error"]
    assert error["param"] == "markup" and "send a mask" in error["message"]
    # A field sent twice is refused, not read as whichever came last.
    twice = httpx.post(
        server.rest_url + "/v1/images/edits",
        files=[("image", source)],
        data={"prompt": ["a cat", "a dog"]},
        timeout=30,
    )
    assert twice.status_code == 400, twice.text
    assert twice.json()["error"]["param"] == "prompt" and "more than once" in twice.json()["error"]["message"]


def test_a_variation_redraws_one_image_however_it_is_spelled(server):
    uploads = [("image[]", ("a.png", png(SOURCE), "image/png"))]
    one = httpx.post(
        server.rest_url + "/v1/images/variations", files=uploads, data={"size": "64x64"}, timeout=60
    )
    assert one.status_code == 200, one.text
    two = httpx.post(server.rest_url + "/v1/images/variations", files=uploads * 2, timeout=30)
    assert two.status_code == 400, two.text
    assert two.json()["error"]["message"] == "image: this endpoint takes one image, got 2"


def test_openapi_documents_openais_three_routes_as_before(server):
    document = httpx.get(server.rest_url + "/openapi.json", timeout=30).json()
    generations = document["paths"]["/v1/images/generations"]["post"]
    assert generations["operationId"] == "generations_v1_images_generations_post"
    body = generations["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ImageGenerationRequest"}
    for route in ("edits", "variations"):
        operation = document["paths"][f"/v1/images/{route}"]["post"]
        assert operation["operationId"] == f"{route}_v1_images_{route}_post"
        assert operation["description"].startswith("multipart/form-data: `image`")
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ImagesResponse"
        }
