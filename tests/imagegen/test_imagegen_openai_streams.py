"""OpenAI's image streams, sizes and default model, as the official openai SDK and its types see them.

Streams carry OpenAI's event types only (`partial_image` as many as asked, then `completed`; step progress
is the opt-in `stream_progress` extension); every `size` answered for an OpenAI model name is one the spec
allows for that model and is the size of the image sent (made within the pixel limit, then resized; the size
made is in `x-modelserve-image-size`); a request naming no model answers as dall-e-2, OpenAI's default.
"""

import base64
import io
import json
import typing

import httpx
import pytest
from openai import OpenAI
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImagesResponse,
)
from openai.types.image_create_variation_params import ImageCreateVariationParams
from openai.types.image_model import ImageModel
from PIL import Image

from services.imagegen.service import create_service
from services.kit.testing import ServerThread

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # create_variation

MAX_PIXELS = 96 * 96  # OpenAI's sizes are made at most 96x96 here, then resized: fast
STEPS = 3
SOURCE = Image.new("RGB", (64, 64), (40, 90, 160))
EVENT_TYPES = {
    event.model_fields["type"].annotation.__args__[0]: event
    for event in (
        ImageGenPartialImageEvent,
        ImageGenCompletedEvent,
        ImageEditPartialImageEvent,
        ImageEditCompletedEvent,
    )
}


def literals(annotation) -> set[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    return set().union(*(literals(arg) for arg in typing.get_args(annotation)))


# The spec's sizes per model: GPT image models' from ImagesResponse.size, dall-e-2's from the variation
# params (the one dall-e-2-only type), dall-e-3's from the API reference (the SDK mixes them into one literal).
GPT_IMAGE_SIZES = literals(ImagesResponse.model_fields["size"].annotation)
EVENT_SIZES = literals(ImageGenCompletedEvent.model_fields["size"].annotation)  # also auto
SIZES = {
    "dall-e-2": literals(typing.get_type_hints(ImageCreateVariationParams)["size"]),
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
}
OPENAI_MODELS = list(typing.get_args(ImageModel))


def sizes_of(model: str) -> set[str]:
    return SIZES.get(model, GPT_IMAGE_SIZES)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded_size(b64_json: str) -> str:
    return "{}x{}".format(*Image.open(io.BytesIO(base64.b64decode(b64_json))).size)


@pytest.fixture(scope="module")
def server(make_settings):
    settings = make_settings(max_wait_ms=0, max_pixels=MAX_PIXELS, default_steps=STEPS, max_images=2)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.rest_url + "/v1", api_key="unused", max_retries=0)


def stream(server, path: str, **fields) -> list[dict]:
    """The stream's events as sent, each validated strictly against the SDK type its `type` names."""
    if path.endswith("edits"):
        request = {"data": {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}}
        request["files"] = {"image": ("s.png", png(SOURCE), "image/png")}
    else:
        request = {"json": fields}
    events = []
    with httpx.stream("POST", server.rest_url + path, timeout=120, **request) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    for event in events:
        if event["type"] in EVENT_TYPES:
            EVENT_TYPES[event["type"]].model_validate(event, strict=True)
    return events


STREAMS = [
    ("/v1/images/generations", "image_generation", {"prompt": "a cat"}),
    ("/v1/images/edits", "image_edit", {"prompt": "a cat", "strength": 1.0}),
]


@pytest.mark.parametrize("path, kind, base", STREAMS, ids=["generate", "edit"])
def test_streams_send_the_partial_images_asked_for_then_completed_and_nothing_else(server, path, kind, base):
    events = stream(
        server, path, **base, model="gpt-image-1.5", size="1536x1024", stream=True, partial_images=2
    )
    assert [e["type"] for e in events] == [f"{kind}.partial_image"] * 2 + [f"{kind}.completed"]
    assert [e["partial_image_index"] for e in events[:2]] == [0, 1]
    for event in events:  # previews too: the size the event names is the image's
        assert event["size"] == "1536x1024" and decoded_size(event["b64_json"]) == "1536x1024"


@pytest.mark.parametrize("path, kind, base", STREAMS, ids=["generate", "edit"])
def test_streams_without_partial_images_send_one_completed_event(server, path, kind, base):
    events = stream(server, path, **base, model="gpt-image-1", stream=True)
    assert [e["type"] for e in events] == [f"{kind}.completed"]
    assert events[0]["size"] in EVENT_SIZES and decoded_size(events[0]["b64_json"]) == events[0]["size"]


def test_the_sdk_reads_the_issue_stream_as_openai_sends_it(client):
    events = list(
        client.images.generate(
            model="gpt-image-1",
            prompt="a cat",
            size="1024x1024",
            stream=True,
            partial_images=2,
            quality="low",
        )
    )
    assert [type(e) for e in events] == [ImageGenPartialImageEvent] * 2 + [ImageGenCompletedEvent]
    assert all(e.b64_json and e.size == "1024x1024" for e in events)


def test_step_progress_is_an_opt_in_extension(server):
    events = stream(
        server,
        "/v1/images/generations",
        prompt="a cat",
        stream=True,
        stream_progress=True,
        steps=STEPS,
        scheduler="euler",
        partial_images=1,
    )
    progress = [e for e in events if e["type"] == "image_generation.progress"]
    assert [(e["step"], e["total_steps"]) for e in progress] == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert events[-1]["type"] == "image_generation.completed"
    refused = httpx.post(
        server.rest_url + "/v1/images/generations",
        json={"prompt": "a cat", "stream_progress": True},
        timeout=60,
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream_progress"


@pytest.mark.parametrize("model", OPENAI_MODELS)
def test_every_openai_model_answers_in_its_own_sizes(client, model):
    raw = client.images.with_raw_response.generate(model=model, prompt="a cat")
    body = raw.http_response.json()
    ImagesResponse.model_validate(body)
    item = body["data"][0]
    image = item["b64_json"] if "b64_json" in item else base64.b64encode(httpx.get(item["url"]).content)
    made = decoded_size(image)
    assert made in sizes_of(model)
    assert body.get("size", made) == made  # dall-e answers carry no size, as OpenAI's do
    width, height = map(int, raw.headers["x-modelserve-image-size"].split("x"))
    assert width * height <= MAX_PIXELS  # made within the pixel limit, sent at OpenAI's size


@pytest.mark.parametrize(
    "model, size",
    [
        (model, size)
        for model in ("gpt-image-1.5", "dall-e-2", "dall-e-3")
        for size in sorted(sizes_of(model))
    ],
)
def test_each_size_of_a_model_is_the_size_sent(client, model, size):
    legacy = model.startswith("dall-e")
    formats = {"response_format": "b64_json"} if legacy else {}
    response = client.images.generate(model=model, prompt="a cat", size=size, **formats)
    assert decoded_size(response.data[0].b64_json) == size
    assert response.size == (None if legacy else size)


@pytest.mark.parametrize(
    "model, size",
    [
        ("gpt-image-1", "512x512"),
        ("dall-e-2", "1792x1024"),
        ("dall-e-3", "256x256"),
        ("gpt-image-2", "1000x1000"),
    ],
)
def test_a_size_the_model_does_not_make_is_refused_naming_size(server, model, size):
    response = httpx.post(
        server.rest_url + "/v1/images/generations",
        json={"prompt": "a cat", "model": model, "size": size},
        timeout=60,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "size"
    assert model in response.json()["error"]["message"]


def test_custom_sizes_for_the_models_that_take_them(client):
    response = client.images.generate(model="gpt-image-2", prompt="a cat", size="1536x864")
    assert response.size == "1536x864" and decoded_size(response.data[0].b64_json) == "1536x864"


def test_edits_and_variations_answer_in_the_models_sizes(client):
    edited = client.images.edit(
        model="gpt-image-1.5", image=("s.png", png(SOURCE), "image/png"), prompt="a cat", size="1024x1536"
    )
    assert edited.size == "1024x1536" and decoded_size(edited.data[0].b64_json) == "1024x1536"
    varied = client.images.create_variation(image=("s.png", png(SOURCE), "image/png"), size="512x512")
    assert httpx.get(varied.data[0].url).status_code == 200
    assert Image.open(io.BytesIO(httpx.get(varied.data[0].url).content)).size == (512, 512)


def test_no_model_answers_as_dall_e_2(server):
    response = httpx.post(
        server.rest_url + "/v1/images/generations", json={"prompt": "a cat", "size": "256x256"}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    ImagesResponse.model_validate(body)
    assert {"output_format", "quality", "background", "usage", "size"}.isdisjoint(body)
    (item,) = body["data"]
    assert "b64_json" not in item
    assert Image.open(io.BytesIO(httpx.get(item["url"]).content)).size == (256, 256)


def test_the_served_model_keeps_its_native_sizes(server):
    for body in ({"model": "stable-diffusion", "size": "64x64"}, {"size": "64x64"}, {"steps": 2}):
        response = httpx.post(
            server.rest_url + "/v1/images/generations", json={"prompt": "a cat", **body}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.json()["size"] == response.headers["x-modelserve-image-size"] == "64x64"
        assert decoded_size(response.json()["data"][0]["b64_json"]) == "64x64"
