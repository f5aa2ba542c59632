"""OpenAI images API conformance, driven by the official openai SDK.

Every parameter (and every value its type lists) of the SDK's generate, edit and create_variation is
sent, and each ends one of three ways: honoured (with an effect the test sees), refused with a 4xx
naming it, or accepted and named in the `x-modelserve-ignored` header. Never silently ignored: the
table below must cover the SDK's params types exactly, so a parameter a newer SDK adds fails here
until it is decided. Every answer validates against the SDK's ImagesResponse.
"""

import base64
import http.server
import io
import re
import threading
import time
import typing
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import openai
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
from openai.types.image_edit_params import ImageEditParamsBase, ImageEditParamsStreaming
from openai.types.image_generate_params import ImageGenerateParamsBase, ImageGenerateParamsStreaming
from openai.types.image_model import ImageModel
from PIL import Image

from services.imagegen.images import reference_sheet
from services.imagegen.service import create_service
from services.kit.testing import ServerThread

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # create_variation

MAX_PIXELS = 96 * 96  # OpenAI's sizes scale down to at most 96x96 here: fast
QUALITY_STEPS = {"low": 2, "medium": 3, "high": 4, "xhigh": 5, "max": 6}
DEFAULT_STEPS = 3
MAX_IMAGES = 3
MAX_INPUT_PIXELS = 128 * 128
API_KEY = "conformance-key"
# OpenAI's sizes scaled into MAX_PIXELS, same aspect ratio, multiples of 8.
MAPPED_SIZES = {
    "auto": "64x64",  # the tiny model's native size
    "256x256": "96x96",
    "512x512": "96x96",
    "1024x1024": "96x96",
    "1536x1024": "112x72",
    "1024x1536": "72x112",
    "1792x1024": "120x72",
    "1024x1792": "72x120",
}
WXH = re.compile(r"^\d+x\d+$")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


SOURCE = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
SOURCE_PNG = png(SOURCE)
TRANSPARENT_LEFT = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
TRANSPARENT_LEFT.paste((0, 0, 0, 0), (0, 0, 32, 64))
MASK_PNG = png(TRANSPARENT_LEFT)


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def server(make_settings):
    settings = make_settings(
        max_wait_ms=0,
        max_images=MAX_IMAGES,
        max_pixels=MAX_PIXELS,
        max_input_pixels=MAX_INPUT_PIXELS,
        default_steps=DEFAULT_STEPS,
        quality_steps=QUALITY_STEPS,
    )
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.rest_url + "/v1", api_key="unused", max_retries=0)


@dataclass
class Outcome:
    status: int
    body: dict
    headers: httpx.Headers

    @property
    def ignored(self) -> set[str]:
        return {
            name.strip() for name in self.headers.get("x-modelserve-ignored", "").split(",") if name.strip()
        }

    def images(self) -> list[Image.Image]:
        decoded = []
        for item in self.body["data"]:
            raw = base64.b64decode(item["b64_json"]) if "b64_json" in item else httpx.get(item["url"]).content
            decoded.append(Image.open(io.BytesIO(raw)))
        return decoded


def literal_values(annotation) -> set:
    """The Literal values anywhere in a (possibly Optional/Union) annotation."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    return (
        set().union(*(literal_values(arg) for arg in typing.get_args(annotation)))
        if typing.get_args(annotation)
        else set()
    )


def admits_any_string(annotation) -> bool:
    return annotation is str or any(admits_any_string(arg) for arg in typing.get_args(annotation))


def conforms(body: dict, model=ImagesResponse) -> None:
    """Validates against the SDK's pydantic model; where a field's type is an enumeration only, its value
    must be one of the enumerated ones (pydantic checks Literals; `size` mixes str with a Literal)."""
    model.model_validate(body)
    for name, info in model.model_fields.items():
        value = body.get(name)
        if value is None or not literal_values(info.annotation):
            continue
        if admits_any_string(info.annotation):
            if name == "size":
                assert WXH.match(value) or value in literal_values(info.annotation), (name, value)
        else:
            assert value in literal_values(info.annotation), (name, value)
    if "data" in body:
        for item in body["data"]:
            assert ("url" in item) != ("b64_json" in item), item


def call(client: OpenAI, method: str, **params) -> Outcome:
    try:
        raw = getattr(client.images.with_raw_response, method)(**params)
    except openai.APIStatusError as exc:
        return Outcome(exc.status_code, exc.response.json(), exc.response.headers)
    outcome = Outcome(raw.status_code, raw.http_response.json(), raw.headers)
    conforms(outcome.body)
    return outcome


# --- the table: every SDK parameter and value, and what it does here -------------------------------------

HONOURED, REFUSED, IGNORED, STREAMED = "honoured", "refused", "ignored", "streamed"


@dataclass
class Case:
    param: str
    value: Any
    expect: str
    check: Any = None  # (outcome, value) -> None, for honoured values
    extra: dict = field(default_factory=dict)  # other parameters the value needs
    status: int = 400

    def __str__(self) -> str:
        return f"{self.param}={self.value!r}"


def image_count(outcome, n):
    assert len(outcome.body["data"]) == n


def output_format_is(outcome, fmt):
    assert outcome.body.get("output_format", fmt) == fmt
    assert outcome.images()[0].format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]


def background_opaque(outcome, _):
    assert outcome.body["background"] == "opaque" and outcome.images()[0].mode == "RGB"


def quality_reported(outcome, quality):
    canonical = {"standard": "medium", "hd": "high"}.get(quality, quality)
    assert outcome.body.get("quality") == (None if canonical == "auto" else canonical)


def answered_as(response_format):
    def check(outcome, _):
        item = outcome.body["data"][0]
        assert response_format in item
        if response_format == "url":
            fetched = httpx.get(item["url"])
            assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"

    return check


def identifier_echoed(outcome, value):
    assert outcome.body["safety_identifier"] == value


def size_made(outcome, size):
    made = outcome.headers["x-modelserve-image-size"]
    assert made == MAPPED_SIZES.get(size, size)
    width, height = map(int, made.split("x"))
    assert width * height <= MAX_PIXELS and width % 8 == 0 and height % 8 == 0
    assert outcome.images()[0].size == (width, height)
    if "size" in outcome.body:
        assert outcome.body["size"] == made


# The sizes OpenAI's models answer in by default: DALL-E's 1024x1024; for GPT image models' auto, the one
# closest in shape to the image made (64x64 natively, or a 64x64 source).
OPENAI_DEFAULT_SIZE = "1024x1024"


def model_shape(outcome, model):
    legacy = model.startswith("dall-e")
    item = outcome.body["data"][0]
    assert ("url" in item) == legacy  # DALL-E names answer links by default, GPT image names base64
    assert ("size" in outcome.body) == (not legacy)  # OpenAI's DALL-E answers have no size field
    served = model == "stable-diffusion"
    # DALL-E's default 1024x1024 is made at 96x96 here; otherwise at the native (or source) 64x64.
    made = "96x96" if legacy else "64x64"
    assert outcome.headers["x-modelserve-image-size"] == made
    sent = made if served else OPENAI_DEFAULT_SIZE
    assert "{}x{}".format(*outcome.images()[0].size) == outcome.body.get("size", sent) == sent


def jpeg_quality(outcome, compression):
    # Lower compression values are coarser quantization tables in the JPEG (PIL writes the IJG tables).
    table = outcome.images()[0].quantization[0]
    assert (sum(table) / len(table) > 50) == (compression <= 20)


def edit_modes(outcome, _):
    assert outcome.headers["x-modelserve-image-size"] == "64x64"


def side_by_side(outcome, _):
    # Two 64x64 sources are redrawn together on one 128x64 sheet.
    assert outcome.headers["x-modelserve-image-size"] == "128x64"


MODELS = list(typing.get_args(ImageModel))
GENERATE_HINTS = typing.get_type_hints(ImageGenerateParamsBase)
EDIT_HINTS = typing.get_type_hints(ImageEditParamsBase)
VARIATION_HINTS = typing.get_type_hints(ImageCreateVariationParams)


def one_image(outcome, _):
    image_count(outcome, 1)


COMMON = [
    Case("background", "opaque", HONOURED, background_opaque),
    Case("background", "auto", HONOURED, background_opaque),
    Case("background", "transparent", IGNORED),
    *[Case("complexity", value, IGNORED) for value in ("low", "medium", "high")],
    Case("frame_count", 4, REFUSED),
    Case("frame_duration_ms", 200, REFUSED),
    *[Case("model", name, HONOURED, model_shape) for name in MODELS],
    Case("model", "stable-diffusion", HONOURED, model_shape),
    Case("model", "dall-e-9", REFUSED, status=404),
    *[Case("n", n, HONOURED, image_count) for n in range(1, MAX_IMAGES + 1)],
    Case("n", MAX_IMAGES + 1, REFUSED),
    Case("n", 0, REFUSED),
    Case("output_compression", 10, HONOURED, jpeg_quality, {"output_format": "jpeg"}),
    Case("output_compression", 90, HONOURED, jpeg_quality, {"output_format": "jpeg"}),
    Case(
        "output_compression",
        100,
        HONOURED,
        lambda outcome, _: output_format_is(outcome, "png"),
        {"output_format": "png"},
    ),  # png is lossless: 100 is what it does
    Case("output_compression", 50, REFUSED, extra={"output_format": "png"}),
    Case("output_compression", 101, REFUSED, extra={"output_format": "jpeg"}),
    *[Case("output_format", fmt, HONOURED, output_format_is) for fmt in ("png", "webp", "jpeg")],
    *[Case("output_format", fmt, REFUSED) for fmt in ("gif", "svg")],
    Case("partial_images", 0, HONOURED, one_image),
    Case("partial_images", 2, IGNORED),  # previews exist only in streams (see the stream tests)
    Case("response_format", "url", HONOURED, answered_as("url")),
    Case("response_format", "b64_json", HONOURED, answered_as("b64_json")),
    Case("response_format", "url", REFUSED, extra={"model": "gpt-image-1.5"}),
    Case("safety_identifier", "hashed-user-1", HONOURED, identifier_echoed),
    Case("user", "user-7", HONOURED, identifier_echoed),
    Case("stream", False, HONOURED, one_image),
    Case("stream", True, STREAMED),
    Case("svg", {"model": "svg-author"}, REFUSED),
]

GENERATE_CASES = [
    *COMMON,
    Case("moderation", "auto", HONOURED, lambda outcome, _: None),  # the server's safety checker setting
    Case("moderation", "low", IGNORED),
    Case("prompt", "a red lighthouse", HONOURED, one_image),
    *[Case("quality", q, HONOURED, quality_reported) for q in literal_values(GENERATE_HINTS["quality"])],
    *[Case("size", s, HONOURED, size_made) for s in literal_values(GENERATE_HINTS["size"])],
    Case("size", "64x64", HONOURED, size_made),
    Case("size", "1000x1000", REFUSED),  # not one of OpenAI's sizes: made exactly, or refused
    *[Case("style", value, IGNORED) for value in ("vivid", "natural")],
]

EDIT_CASES = [
    *COMMON,
    Case("prompt", "a red lighthouse", HONOURED, edit_modes),
    Case(
        "image",
        [("a.png", SOURCE_PNG, "image/png"), ("b.png", SOURCE_PNG, "image/png")],
        HONOURED,
        side_by_side,
    ),
    Case("image", [("a.png", SOURCE_PNG, "image/png")] * 17, REFUSED),  # OpenAI's limit is 16
    Case("image", [("a.png", SOURCE_PNG, "image/png")], HONOURED, edit_modes),
    *[Case("input_fidelity", value, IGNORED) for value in ("high", "low")],
    Case("markup", ("m.png", MASK_PNG, "image/png"), REFUSED),
    Case("mask", ("m.png", MASK_PNG, "image/png"), HONOURED, edit_modes),
    *[Case("quality", q, HONOURED, quality_reported) for q in literal_values(EDIT_HINTS["quality"])],
    *[Case("size", s, HONOURED, size_made) for s in literal_values(EDIT_HINTS["size"])],
]

VARIATION_CASES = [
    Case("image", ("a.png", SOURCE_PNG, "image/png"), HONOURED, edit_modes),
    Case("image", ("a.png", b"not an image", "image/png"), REFUSED, status=415),
    *[Case("model", name, HONOURED, model_shape) for name in MODELS],
    Case("model", "dall-e-9", REFUSED, status=404),
    *[Case("n", n, HONOURED, image_count) for n in range(1, MAX_IMAGES + 1)],
    Case("n", MAX_IMAGES + 1, REFUSED),
    Case("response_format", "url", HONOURED, answered_as("url")),
    Case("response_format", "b64_json", HONOURED, answered_as("b64_json")),
    *[Case("size", s, HONOURED, size_made) for s in literal_values(VARIATION_HINTS["size"])],
    Case("user", "user-7", HONOURED, identifier_echoed),
]

ENDPOINTS = {
    "generate": (GENERATE_CASES, ImageGenerateParamsStreaming, {"prompt": "a lighthouse"}),
    "edit": (
        EDIT_CASES,
        ImageEditParamsStreaming,
        {"prompt": "a lighthouse", "image": ("s.png", SOURCE_PNG, "image/png")},
    ),
    "create_variation": (
        VARIATION_CASES,
        ImageCreateVariationParams,
        {"image": ("s.png", SOURCE_PNG, "image/png")},
    ),
}


def sdk_parameters(params_type) -> dict[str, Any]:
    return typing.get_type_hints(params_type)


@pytest.mark.parametrize("method", list(ENDPOINTS))
def test_the_table_covers_every_sdk_parameter_and_value(method):
    cases, params_type, _ = ENDPOINTS[method]
    hints = sdk_parameters(params_type)
    assert {case.param for case in cases} == set(hints), "decide what every SDK parameter does here"
    for name, annotation in hints.items():
        listed = literal_values(annotation) - {False, True}
        covered = {case.value for case in cases if case.param == name and isinstance(case.value, str | int)}
        assert listed <= covered, (name, listed - covered)


def all_cases():
    for method, (cases, _, _) in ENDPOINTS.items():
        for case in cases:
            if case.expect != STREAMED:
                yield pytest.param(method, case, id=f"{method}-{case}")


@pytest.mark.parametrize("method, case", list(all_cases()))
def test_every_parameter_is_honoured_refused_or_reported(client, method, case):
    _, _, base = ENDPOINTS[method]
    params = {**base, **case.extra, case.param: case.value}
    if method == "generate" and "size" not in params and case.param != "model":
        params["size"] = "64x64"  # the served model's native size (OpenAI's model names take their own)
    if method == "create_variation" and "response_format" not in params and case.param != "model":
        params["response_format"] = "b64_json"
    outcome = call(client, method, **params, extra_body={"seed": 11, "scheduler": "euler"})
    if case.expect == REFUSED:
        assert outcome.status == case.status, outcome.body
        error = outcome.body["error"]
        assert error["param"].split(".")[0].split("[")[0] == case.param and case.param in error["message"], (
            error
        )
        return
    assert outcome.status == 200, outcome.body
    if case.expect == IGNORED:
        assert case.param in outcome.ignored, outcome.headers
        return
    assert case.param not in outcome.ignored
    case.check(outcome, case.value)


# --- honoured in depth ------------------------------------------------------------------------------------


def progress_steps(events) -> int:
    return max(e.total_steps for e in events if e.type.endswith(".progress"))


@pytest.mark.parametrize("quality", sorted(literal_values(GENERATE_HINTS["quality"])))
def test_quality_sets_the_denoising_steps(client, quality):
    events = list(
        client.images.generate(
            prompt="a boat",
            size="64x64",
            quality=quality,
            stream=True,
            extra_body={"scheduler": "euler", "stream_progress": True},
        )
    )
    canonical = {"standard": "medium", "hd": "high"}.get(quality, quality)
    assert progress_steps(events) == QUALITY_STEPS.get(canonical, DEFAULT_STEPS)
    completed = events[-1].model_dump(exclude_none=True)
    assert completed["quality"] == canonical


def test_quality_and_steps_together_must_agree(client):
    refused = call(client, "generate", prompt="x", size="64x64", quality="high", extra_body={"steps": 9})
    assert refused.status == 400 and refused.body["error"]["param"] == "quality"
    agreed = call(client, "generate", prompt="x", size="64x64", quality="high", extra_body={"steps": 4})
    assert agreed.status == 200 and agreed.body["quality"] == "high"


def test_jpeg_compression_trades_bytes_for_quality(client):
    sizes = {}
    for compression in (5, 95):
        outcome = call(
            client,
            "generate",
            prompt="a tree",
            size="96x96",
            output_format="jpeg",
            output_compression=compression,
            extra_body={"seed": 4},
        )
        sizes[compression] = len(base64.b64decode(outcome.body["data"][0]["b64_json"]))
    assert sizes[5] < sizes[95]


def test_prompt_changes_the_image_and_long_prompts_are_reported_truncated(client):
    def pixels(prompt):
        outcome = call(client, "generate", prompt=prompt, size="64x64", extra_body={"seed": 8})
        return np.asarray(outcome.images()[0]), outcome

    first, outcome = pixels("a red lighthouse")
    second, _ = pixels("a green forest")
    assert not np.array_equal(first, second)
    assert "x-modelserve-truncated" not in outcome.headers
    assert (
        outcome.body["usage"]["input_tokens"]
        == outcome.body["usage"]["input_tokens_details"]["text_tokens"]
        > 0
    )
    _, long = pixels("cat " * 120)
    assert "prompt" in long.headers["x-modelserve-truncated"]


@pytest.mark.parametrize(
    "method, kind, partial_type, completed_type",
    [
        ("generate", "image_generation", ImageGenPartialImageEvent, ImageGenCompletedEvent),
        ("edit", "image_edit", ImageEditPartialImageEvent, ImageEditCompletedEvent),
    ],
)
def test_streams_validate_against_the_sdk_event_types(client, method, kind, partial_type, completed_type):
    _, _, base = ENDPOINTS[method]
    params = {
        **base,
        "stream": True,
        "partial_images": 1,
        "quality": "medium",
        "size": "1024x1024",
        "safety_identifier": "sid",
        "extra_body": {"scheduler": "euler", "seed": 3},
    }
    if method == "edit":
        params["extra_body"]["strength"] = 1.0
    events = list(getattr(client.images, method)(**params))
    partial = [e for e in events if e.type == f"{kind}.partial_image"]
    completed = [e for e in events if e.type == f"{kind}.completed"]
    assert len(partial) == 1 and len(completed) == 1
    partial_type.model_validate(partial[0].model_dump())
    completed_type.model_validate(completed[0].model_dump())
    assert completed[0].size == "96x96" and completed[0].quality == "medium"
    assert completed[0].background == "opaque" and completed[0].safety_identifier == "sid"
    assert Image.open(io.BytesIO(base64.b64decode(completed[0].b64_json))).size == (96, 96)


def test_url_and_b64_answers_carry_the_same_image(client, server):
    params = dict(prompt="a harbour", size="64x64", extra_body={"seed": 21})
    linked = call(client, "generate", response_format="url", **params)
    inline = call(client, "generate", response_format="b64_json", **params)
    url = linked.body["data"][0]["url"]
    assert url.startswith(server.rest_url + "/v1/images/files/")
    image_id = url.rsplit("/", 1)[1]
    assert len(image_id) >= 32  # secrets.token_urlsafe(24): not guessable
    fetched = httpx.get(url)
    assert fetched.content == base64.b64decode(inline.body["data"][0]["b64_json"])
    assert "private" in fetched.headers["cache-control"]
    unknown = httpx.get(server.rest_url + "/v1/images/files/" + "A" * 32)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_links_start_with_the_host_the_client_used(server):
    response = httpx.post(
        server.rest_url + "/v1/images/generations",
        json={"prompt": "x", "model": "dall-e-2", "size": "256x256"},
        headers={"Host": "images.internal:8443"},
    )
    assert response.json()["data"][0]["url"].startswith("http://images.internal:8443/v1/images/files/")


def test_edits_take_json_with_data_urls_like_uploads(client, server):
    options = {"prompt": "a window", "seed": 5, "steps": 3, "scheduler": "euler", "size": "64x64"}
    uploaded = call(
        client,
        "edit",
        image=("s.png", SOURCE_PNG, "image/png"),
        mask=("m.png", MASK_PNG, "image/png"),
        prompt=options["prompt"],
        size="64x64",
        extra_body={k: options[k] for k in ("seed", "steps", "scheduler")},
    )
    as_json = httpx.post(
        server.rest_url + "/v1/images/edits",
        json={
            **options,
            "images": [{"image_url": data_url(SOURCE_PNG)}],
            "mask": {"image_url": data_url(MASK_PNG)},
        },
    )
    assert as_json.status_code == 200, as_json.text
    conforms(as_json.json())
    assert as_json.json()["data"][0]["b64_json"] == uploaded.body["data"][0]["b64_json"]


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"images": [{"file_id": "file-abc"}]}, 400, "images[0].file_id"),
        ({"images": [{"image_url": "https://example.com/cat.png"}]}, 400, "images[0].image_url"),
        ({"images": [{"image_url": "file:///etc/passwd"}]}, 400, "images[0].image_url"),
        ({"images": [{"image_url": "data:image/png;base64,@@@"}]}, 400, "images[0].image_url"),
        ({"images": [{"image_url": data_url(b"not a png")}]}, 415, "images[0]"),
        ({"images": [{"image_url": data_url(png(Image.new("RGB", (200, 200))))}]}, 413, "images[0]"),
        ({"images": [{"image_url": data_url(SOURCE_PNG)}] * 17}, 400, "images"),
        (
            {"images": [{"image_url": data_url(SOURCE_PNG)}] * 2, "mask": {"image_url": data_url(MASK_PNG)}},
            400,
            "mask",
        ),
        ({"images": []}, 400, "images"),
        (
            {"images": [{"image_url": data_url(SOURCE_PNG)}], "mask": {"file_id": "file-m"}},
            400,
            "mask.file_id",
        ),
    ],
)
def test_json_edits_refuse_what_they_cannot_read(server, body, status, param):
    response = httpx.post(server.rest_url + "/v1/images/edits", json={"prompt": "x", **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    if param == "images[0].file_id":
        assert "no Files API" in error["message"]
    if param == "images":
        assert "at most 16 images" in error["message"] or "at least 1" in error["message"]


def test_several_edit_images_are_drawn_side_by_side_on_one_sheet():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    uploads = [(f"images[{i}]", png(Image.new("RGB", (32, 16), color))) for i, color in enumerate(colors)]
    sheet = np.asarray(reference_sheet(uploads, max_pixels=64 * 64))
    assert sheet.shape == (32, 64, 3)  # a 2x2 grid of 32x16 cells (the first image's shape)
    cells = [sheet[8, 16], sheet[8, 48], sheet[24, 16], sheet[24, 48]]
    assert [tuple(cell) for cell in cells] == [*colors, (255, 255, 255)]  # the empty cell stays white


def test_uploads_obey_the_same_pixel_limit(server):
    big = png(Image.new("RGB", (200, 200)))
    response = httpx.post(
        server.rest_url + "/v1/images/edits",
        data={"prompt": "x"},
        files={"image": ("big.png", big, "image/png")},
    )
    assert response.status_code == 413 and response.json()["error"]["param"] == "image"


def test_every_parameter_set_to_null_means_its_default(server):
    nullable = [
        name
        for name, hint in typing.get_type_hints(ImageGenerateParamsBase).items()
        if type(None) in typing.get_args(hint)
    ]
    body = {"prompt": "x", **dict.fromkeys(nullable)}
    response = httpx.post(server.rest_url + "/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    conforms(response.json())


def test_models_list_the_openai_names(server):
    entry = next(
        m for m in httpx.get(server.rest_url + "/v1/models").json()["data"] if m["service"] == "imagegen"
    )
    assert set(typing.get_args(ImageModel)) <= set(entry["aliases"])


# --- links: expiry, bounds, keys, public base URL, remote images ----------------------------------------


class ImageHost(http.server.BaseHTTPRequestHandler):
    """A remote image host: /source.png, /huge.png (over the byte cap), /moved (a redirect)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/source.png")
            self.end_headers()
            return
        body = SOURCE_PNG if self.path == "/source.png" else b"\0" * (300 * 1024)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{host.server_address[1]}"
    host.shutdown()


TTL_S = 1.5


@pytest.fixture(scope="module")
def keyed_server(make_settings, image_host):
    """Short-lived links in a store of two images, API keys on, a public base URL, one allowed image host."""
    settings = make_settings(
        max_wait_ms=0,
        max_images=MAX_IMAGES,
        url_ttl_s=TTL_S,
        url_store_max_images=2,
        public_base_url="https://images.example.test/gateway",
        remote_image_hosts=image_host,
        max_body_bytes=256 * 1024,
    )
    running = ServerThread(lambda: [create_service(settings)], settings)
    with pytest.MonkeyPatch.context() as patch:  # read once, while the server starts
        patch.setenv("MODELSERVE_API_KEYS", API_KEY)
        running.start()
    try:
        yield running
    finally:
        running.stop()


def local(server, url: str) -> str:
    return url.replace("https://images.example.test/gateway", server.rest_url)


def test_links_need_the_key_expire_and_the_oldest_are_evicted(keyed_server):
    client = OpenAI(base_url=keyed_server.rest_url + "/v1", api_key=API_KEY, max_retries=0)
    made = call(client, "generate", prompt="x", model="dall-e-2", n=3, size="256x256")
    urls = [item["url"] for item in made.body["data"]]
    assert all(url.startswith("https://images.example.test/gateway/v1/images/files/") for url in urls)
    key = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(local(keyed_server, urls[2])).status_code == 401
    assert httpx.get(local(keyed_server, urls[0]), headers=key).status_code == 404  # a store of two: evicted
    assert [httpx.get(local(keyed_server, url), headers=key).status_code for url in urls[1:]] == [200, 200]
    time.sleep(TTL_S + 0.2)
    assert [httpx.get(local(keyed_server, url), headers=key).status_code for url in urls[1:]] == [404, 404]


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/source.png", 200, None),
        ("/huge.png", 413, "exceeds"),
        ("/moved", 400, "302"),
    ],
)
def test_remote_images_only_from_allowed_hosts(keyed_server, image_host, path, status, message):
    key = {"Authorization": f"Bearer {API_KEY}"}
    body = {
        "prompt": "x",
        "images": [{"image_url": f"http://{image_host}{path}"}],
        "response_format": "b64_json",
    }
    response = httpx.post(keyed_server.rest_url + "/v1/images/edits", json=body, headers=key, timeout=60)
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["error"]["message"]
    port = image_host.rsplit(":", 1)[1]
    body["images"] = [{"image_url": f"http://localhost:{port}/source.png"}]  # same server, host not listed
    refused = httpx.post(keyed_server.rest_url + "/v1/images/edits", json=body, headers=key, timeout=60)
    assert refused.status_code == 400 and "IMAGEGEN_REMOTE_IMAGE_HOSTS" in refused.json()["error"]["message"]
