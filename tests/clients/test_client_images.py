"""The image generation client (REST sync and async, gRPC; progress streams, edits) on the tiny SD model."""

import io

import pytest
from PIL import Image

from clients import AsyncClient
from clients.cli import main
from clients.errors import InvalidRequestError
from clients.images import ImageResult, PartialImage, Progress
from loadtests.payloads import image_file
from services.imagegen.service import create_service
from services.imagegen.settings import ImageGenSettings
from services.kit.testing import ServerThread

OPTIONS = {"size": "64x64", "steps": 3, "seed": 42, "scheduler": "euler"}  # euler: exactly `steps` steps


@pytest.fixture(scope="module")
def server(models_dir):
    settings = ImageGenSettings(
        model=str(models_dir / "imagegen" / "stable-diffusion"),
        safety_checker=False,
        default_steps=3,
        log_level="warning",
    )
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_generate_returns_decodable_images_reproducible_by_seed(rest, grpc_client, tmp_path):
    result = rest.images.generate("a red house", n=2, **OPTIONS)
    assert [i.seed for i in result.images] == [42, 43] and result.size == "64x64"
    assert decoded(result.image.data).size == (64, 64) and result.image.media_type == "image/png"
    assert result.image.save(tmp_path / "house.png").read_bytes() == result.image.data
    again = grpc_client.images.generate("a red house", n=2, **OPTIONS)
    assert [i.data for i in again.images] == [i.data for i in result.images]
    assert again.task == "text-to-image"


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_progress_stream_reports_every_step_then_the_image(rest, grpc_client, protocol):
    client = rest if protocol == "rest" else grpc_client
    events = list(client.images.generate_stream("a blue boat", partial_images=1, **OPTIONS))
    steps = [(e.step, e.total_steps) for e in events if isinstance(e, Progress)]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert any(isinstance(e, PartialImage) and decoded(e.data) for e in events)
    assert isinstance(events[-1], ImageResult)
    assert events[-1].image.data == client.images.generate("a blue boat", **OPTIONS).image.data


def test_on_progress_callback_and_edits(rest, grpc_client):
    import random

    seen = []
    result = rest.images.generate("a green tree", on_progress=seen.append, **OPTIONS)
    assert [p.step for p in seen if isinstance(p, Progress)] == [1, 2, 3] and result.images
    source = image_file(64, 64, random.Random(1))
    edited = rest.images.edit(source, "a green tree at night", strength=0.7, **OPTIONS)
    assert decoded(edited.image.data).size == (64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    inpainted = grpc_client.images.edit(source, "a window", mask=buffer.getvalue(), **OPTIONS)
    assert inpainted.task == "inpaint"


def test_bad_requests_name_the_field(rest, grpc_client):
    with pytest.raises(InvalidRequestError) as caught:
        rest.images.generate("x", size="63x64", steps=2)
    assert caught.value.param == "size" and "multiples of 8" in caught.value.message
    with pytest.raises(InvalidRequestError, match="scheduler"):
        list(rest.images.generate_stream("x", scheduler="nope", steps=2))
    with pytest.raises(InvalidRequestError, match="steps"):
        grpc_client.images.generate("x", steps=100000)


async def test_async_generate_with_progress(server, rest):
    seen = []
    async with AsyncClient(server.rest_url, timeout=120) as client:
        result = await client.images.generate("a cat", on_progress=seen.append, **OPTIONS)
        plain = await client.images.generate("a cat", **OPTIONS)
    assert [p.step for p in seen if isinstance(p, Progress)] == [1, 2, 3]
    assert result.image.data == plain.image.data == rest.images.generate("a cat", **OPTIONS).image.data


# -- the command line on the same server ----------------------------------------------------------


def test_cli_generates_and_edits_image_files(server, rest, tmp_path, capsys):
    expected = rest.images.generate("a small boat", n=2, **OPTIONS)
    for protocol in ("rest", "grpc"):
        out = tmp_path / f"{protocol}.png"
        args = [
            "generate",
            "a small boat",
            "-o",
            str(out),
            "-n",
            "2",
            "--size",
            "64x64",
            "--steps",
            "3",
            "--seed",
            "42",
            "--scheduler",
            "euler",
            "--protocol",
            protocol,
            "--url",
            server.rest_url,
            "--grpc",
            server.grpc_target,
        ]
        assert main(args) == 0
        written = [tmp_path / f"{protocol}-1.png", tmp_path / f"{protocol}-2.png"]
        assert [p.read_bytes() for p in written] == [i.data for i in expected.images]
        assert f"(seed 43) to {written[1]}" in capsys.readouterr().out
    jpeg = tmp_path / "edited.jpg"
    code = main(
        [
            "edit",
            str(written[0]),
            "a boat at dusk",
            "-o",
            str(jpeg),
            "--strength",
            "0.5",
            "--steps",
            "4",
            "--url",
            server.rest_url,
        ]
    )
    assert code == 0 and decoded(jpeg.read_bytes()).format == "JPEG"
    code = main(
        ["generate", "x", "-o", str(tmp_path / "bad.png"), "--size", "65x64", "--url", server.rest_url]
    )
    assert code == 1 and "multiples of 8" in capsys.readouterr().err
