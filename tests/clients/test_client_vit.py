"""The ViT client (TF Serving protocol: REST and tensorflow-serving-api gRPC) against the dev server."""

import random

import pytest

from clients import AsyncClient, Client, GrpcClient
from clients.cli import main
from clients.errors import InvalidRequestError, NotFoundError
from loadtests.payloads import image_file
from services.kit.testing import ServerThread

pytest.importorskip("tensorflow_serving")
from services.vit.server import create_service  # noqa: E402  (imports TensorFlow)
from services.vit.settings import ViTSettings  # noqa: E402

IMAGES = [image_file(64, 48, random.Random(i), fmt) for i, fmt in enumerate(("PNG", "JPEG", "PNG"))]


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("vit-serving")
    settings = ViTSettings(
        model_base=base, checkpoint=str(models_dir / "vit" / "hf-vit"), log_level="warning"
    )
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def rest(server):
    with Client("http://unused.invalid", vit_url=server.rest_url, timeout=60) as client:
        yield client.vit


@pytest.fixture(scope="module")
def grpc_vit(server):
    with GrpcClient("unused.invalid:1", vit_target=server.grpc_target, timeout=60) as client:
        yield client.vit


def test_rest_and_grpc_classify_alike(rest, grpc_vit):
    via_rest = rest.classify_many(IMAGES)
    via_grpc = grpc_vit.classify_many(IMAGES)
    assert len(via_rest) == len(IMAGES) and all(0 < c.confidence <= 1 for c in via_rest)
    assert [c.label for c in via_rest] == [c.label for c in via_grpc]
    assert [c.confidence for c in via_rest] == pytest.approx([c.confidence for c in via_grpc], abs=1e-5)
    assert rest.classify(IMAGES[1]) == via_rest[1]


def test_top_k_is_ranked_and_starts_with_the_label(rest, grpc_vit):
    ranking = rest.top_k(IMAGES[0])
    scores = [c.confidence for c in ranking]
    assert len(ranking) > 1 and scores == sorted(scores, reverse=True)
    assert ranking[0].label == rest.classify(IMAGES[0]).label
    assert [c.label for c in grpc_vit.top_k(IMAGES[0])] == [c.label for c in ranking]


def test_model_status_and_errors(rest, grpc_vit):
    assert [s["state"] for s in rest.status()] == ["AVAILABLE"]
    with pytest.raises(InvalidRequestError):
        rest.classify(b"not an image")
    with pytest.raises(InvalidRequestError):
        grpc_vit.classify(b"not an image")
    with pytest.raises(NotFoundError):
        rest.classify(IMAGES[0], version=99)


async def test_async_classify(server, rest):
    async with AsyncClient("http://unused.invalid", vit_url=server.rest_url, timeout=60) as client:
        result = await client.vit.classify_many(IMAGES)
    assert result == rest.classify_many(IMAGES)


def test_cli_classifies_files(server, rest, tmp_path, capsys):
    paths = []
    for i, data in enumerate(IMAGES):
        paths.append(tmp_path / f"image{i}.png")
        paths[-1].write_bytes(data)
    expected = rest.classify_many(IMAGES)
    for protocol in ("rest", "grpc"):
        code = main(
            [
                "classify",
                *map(str, paths),
                "--vit-url",
                server.rest_url,
                "--vit-grpc",
                server.grpc_target,
                "--protocol",
                protocol,
            ]
        )
        lines = capsys.readouterr().out.splitlines()
        assert code == 0 and [line.split("\t")[1] for line in lines] == [c.label for c in expected]
