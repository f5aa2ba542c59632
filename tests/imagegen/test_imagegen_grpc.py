"""gRPC Generate and GenerateStream against a real server: same validation and pixels as REST."""

import io

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from protos import imagegen_pb2 as pb
from protos import imagegen_pb2_grpc as pb_grpc
from services.imagegen.service import create_service
from services.kit.testing import ServerThread


@pytest.fixture(scope="module")
def server(make_settings):
    settings = make_settings(max_wait_ms=0)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.ImageGenerationStub(channel)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_generate_matches_rest_pixel_for_pixel(server, stub, pixels):
    request = pb.GenerateRequest(
        prompt="a castle",
        n=2,
        width=64,
        height=64,
        steps=5,
        guidance_scale=5.5,
        seed=99,
        scheduler="lms",
        negative_prompt="rain",
    )
    response = stub.Generate(request, timeout=60)
    assert response.task == "text-to-image" and (response.width, response.height) == (64, 64)
    assert [i.seed for i in response.images] == [99, 100]
    assert response.images[0].media_type == "image/png" and not response.images[0].HasField(
        "nsfw_content_detected"
    )
    rest = httpx.post(
        server.rest_url + "/v1/images/generations",
        json={
            "prompt": "a castle",
            "n": 2,
            "size": "64x64",
            "steps": 5,
            "guidance_scale": 5.5,
            "seed": 99,
            "scheduler": "lms",
            "negative_prompt": "rain",
        },
        timeout=60,
    ).json()
    for image, data in zip(response.images, rest["data"], strict=True):
        assert np.array_equal(pixels(image.data), pixels(data["b64_json"]))


def test_generate_edits_with_image_and_mask(stub, pixels):
    source = Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 72, 3), dtype=np.uint8))
    img2img = stub.Generate(
        pb.GenerateRequest(prompt="x", image=png(source), steps=4, strength=0.5, output_format="webp"),
        timeout=60,
    )
    assert img2img.task == "image-to-image" and (img2img.width, img2img.height) == (72, 80)
    assert img2img.images[0].media_type == "image/webp"
    mask = Image.new("L", source.size, 255)
    inpaint = stub.Generate(
        pb.GenerateRequest(prompt="x", image=png(source), mask=png(mask), steps=4), timeout=60
    )
    assert inpaint.task == "inpaint" and pixels(inpaint.images[0].data).shape == (80, 72, 3)


def test_stream_sends_progress_previews_and_the_result(stub, pixels):
    request = pb.GenerateRequest(prompt="a ship", steps=4, scheduler="ddim", seed=3, partial_images=4)
    events = list(stub.GenerateStream(request, timeout=60))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["progress", "partial_image"] * 4 + ["result"]
    assert [(e.progress.step, e.progress.total_steps) for e in events if e.HasField("progress")] == [
        (1, 4),
        (2, 4),
        (3, 4),
        (4, 4),
    ]
    assert pixels(events[1].partial_image.previews[0].data).shape == (8, 8, 3)
    unary = stub.Generate(pb.GenerateRequest(prompt="a ship", steps=4, scheduler="ddim", seed=3), timeout=60)
    assert np.array_equal(pixels(events[-1].result.images[0].data), pixels(unary.images[0].data))


@pytest.mark.parametrize(
    "request_fields, field",
    [
        (dict(prompt="x", width=64), "height"),
        (dict(prompt="x", width=64, height=100), "height"),
        (dict(prompt="x", scheduler="nope"), "scheduler"),
        (dict(prompt="x", n=9), "n"),
        (dict(prompt="x", image=b"garbage"), "image"),
        (dict(prompt="x", mask=b"garbage"), "mask"),
        (dict(prompt="x", strength=0.5), "strength"),
        (dict(prompt="x", partial_images=1), "partial_images"),
        (dict(prompt="", steps=4), "prompt"),
    ],
)
def test_bad_requests_get_invalid_argument_naming_the_field(stub, request_fields, field):
    with pytest.raises(grpc.RpcError) as failure:
        stub.Generate(pb.GenerateRequest(**request_fields), timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in failure.value.details()
