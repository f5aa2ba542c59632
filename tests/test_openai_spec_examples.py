"""Every request example of OpenAI's API reference for the audio and image endpoints, sent to the platform.

The table mirrors the examples of OpenAI's current API reference, the pages generated from its OpenAPI
description (each endpoint's schema-generated example, then its titled examples): the same endpoint, the same fields with the same values, the same multipart spellings
(`include[]`, `image[]`). Where an example names a file (audio.mp3, otter.png, ...) a real file of that kind
made here is sent. Each example must be answered 200, except those whose content cannot be valid here (a
placeholder URL, an unreachable Files API id, an empty input, a PNG sent as audio ...): those get a 4xx whose
JSON error names the field and the reason. Raw HTTP sends exactly the example's fields (the SDK would reshape
them); the SDK's own calls for the same examples follow the table.

The examples' files are written here, never copied: the yaml is not vendored.
"""

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from PIL import Image

from services.asr.service import create_service as create_asr
from services.imagegen.service import create_service as create_imagegen
from services.imagegen.settings import ImageGenSettings
from services.kit.config import PlatformSettings
from services.kit.testing import ServerThread
from services.tts.service import create_service as create_tts

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # translations, variations

MAX_PIXELS = 96 * 96  # OpenAI's 1024x1024 is made at 96x96 here: fast on two cores
TIMEOUT_S = 180


# --- the platform: TTS, ASR and image generation on one port, tiny models ------------------------------------


@pytest.fixture(scope="module")
def platform(models_dir, make_tts_settings, make_asr_settings):
    services = [
        make_tts_settings(),
        make_asr_settings(),
        ImageGenSettings(
            model=str(models_dir / "imagegen" / "stable-diffusion"),
            safety_checker=False,
            threads=1,
            max_wait_ms=0,
            max_pixels=MAX_PIXELS,
            max_input_pixels=128 * 128,
            default_steps=2,
            quality_steps={"low": 2, "medium": 2, "high": 3, "xhigh": 3, "max": 3},
            log_level="warning",
        ),
    ]
    factories = [(create_tts, services[0]), (create_asr, services[1]), (create_imagegen, services[2])]
    settings = PlatformSettings(
        log_level="warning", shutdown_grace_s=2.0, max_body_bytes=max(s.max_body_bytes for s in services)
    )
    with ServerThread(lambda: [create(s) for create, s in factories], settings) as running:
        yield running


@pytest.fixture(scope="module")
def http(platform):
    with httpx.Client(base_url=platform.rest_url, timeout=TIMEOUT_S) as client:
        yield client


# --- the files the examples name, made here ------------------------------------------------------------------


def speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    """A voiced glide under a syllable-rate envelope: audio Whisper decodes like speech."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(140 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))) / rate
    voice = sum(0.3 / k * np.sin(k * phase) for k in range(1, 5))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.8 * voice * envelope).astype(np.float32)


def audio_file(fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, speech_like(2.0), 16000, format=fmt)
    return buffer.getvalue()


def png_file(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(sum(color))
    pixels = np.clip(np.array(color) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


OTTER_PNG = png_file((120, 90, 60))
FILES = {
    "file": audio_file("WAV"),  # the schema-generated examples upload "@/path/to/file"
    "audio.mp3": audio_file("MP3"),
    "meeting.wav": audio_file("WAV"),
    # OpenAI takes m4a (AAC in MP4); this platform reads WAV, FLAC, OGG and MP3, so the example's words are
    # sent in a WAV under the example's name (the server reads the content, not the name).
    "german.m4a": audio_file("WAV"),
    "image": png_file((200, 200, 200)),  # the schema-generated "@/path/to/image"
    "otter.png": OTTER_PNG,
    "body-lotion.png": png_file((230, 210, 180)),
    "bath-bomb.png": png_file((220, 120, 170)),
    "incense-kit.png": png_file((90, 60, 40)),
    "soap.png": png_file((140, 200, 230)),
}
SOURCE_IMAGE_URL = "data:image/png;base64," + base64.b64encode(OTTER_PNG).decode("ascii")


# --- the table -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One request example: its endpoint, its title in OpenAI's reference, its fields exactly as sent.

    `json` examples send `fields` as the JSON body; the others send them as multipart text fields (a list
    value repeats the field, as curl's `-F 'include[]=...'` does) with `files` as (field, name) parts.
    """

    path: str
    title: str
    fields: dict[str, Any]
    files: tuple[tuple[str, str], ...] = ()
    json: bool = False
    expect: int = 200
    # For a 4xx: the field the error names (error.param) and words its message must contain.
    param: str | None = None
    reason: str = ""
    contents: dict[str, bytes] = field(default_factory=dict)  # a file's content replaced, by name
    # For a 200: parameters the answer must report as not applied (x-modelserve-ignored).
    ignored: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.path.removeprefix('/v1/')}: {self.title}"


SPEECH, TRANSCRIPTIONS, TRANSLATIONS = (
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
)
GENERATIONS, EDITS, VARIATIONS = "/v1/images/generations", "/v1/images/edits", "/v1/images/variations"
FOX = "The quick brown fox jumped over the lazy dog."
GIFT_BASKET = "Create a lovely gift basket with these four items in it"
GIFT_ITEMS = ("body-lotion.png", "bath-bomb.png", "incense-kit.png", "soap.png")
OTTER = "A cute baby sea otter"

EXAMPLES = [
    # POST /v1/audio/speech
    Example(SPEECH, "schema example", {"input": "input", "model": "tts-1", "voice": "alloy"}, json=True),
    Example(SPEECH, "Default", {"model": "gpt-4o-mini-tts", "input": FOX, "voice": "alloy"}, json=True),
    Example(
        SPEECH,
        "SSE stream format",
        {"model": "gpt-4o-mini-tts", "input": FOX, "voice": "alloy", "stream_format": "sse"},
        json=True,
    ),
    # The text-to-speech guide's quick start: gpt-4o-mini-tts with instructions.
    Example(
        SPEECH,
        "guide: instructions",
        {
            "model": "gpt-4o-mini-tts",
            "voice": "coral",
            "input": "Today is a wonderful day to build something people love!",
            "instructions": "Speak in a cheerful and positive tone.",
        },
        json=True,
    ),
    Example(
        SPEECH,
        "Default, empty input",
        {"model": "gpt-4o-mini-tts", "input": "", "voice": "alloy"},
        json=True,
        expect=400,
        param="input",
        reason="empty",
    ),
    # POST /v1/audio/transcriptions
    Example(TRANSCRIPTIONS, "schema example", {"model": "gpt-4o-transcribe"}, files=(("file", "file"),)),
    Example(TRANSCRIPTIONS, "Default", {"model": "gpt-4o-transcribe"}, files=(("file", "audio.mp3"),)),
    Example(
        TRANSCRIPTIONS,
        "Diarization",
        {
            "model": "gpt-4o-transcribe-diarize",
            "response_format": "diarized_json",
            "chunking_strategy": "auto",
            "known_speaker_names[]": ["agent"],
            "known_speaker_references[]": ["data:audio/wav;base64,AAA..."],
        },
        files=(("file", "meeting.wav"),),
        expect=400,
        param="known_speaker_names[]",
        reason="diarization",
    ),
    Example(
        TRANSCRIPTIONS,
        "Logprobs",
        {"include[]": ["logprobs"], "model": "gpt-4o-transcribe", "response_format": "json"},
        files=(("file", "audio.mp3"),),
    ),
    Example(
        TRANSCRIPTIONS,
        "Segment timestamps",
        {"timestamp_granularities[]": ["segment"], "model": "whisper-1", "response_format": "verbose_json"},
        files=(("file", "audio.mp3"),),
    ),
    Example(
        TRANSCRIPTIONS,
        "Streaming",
        {"model": "gpt-4o-mini-transcribe", "stream": "true"},
        files=(("file", "audio.mp3"),),
    ),
    Example(
        TRANSCRIPTIONS,
        "Word timestamps",
        {"timestamp_granularities[]": ["word"], "model": "whisper-1", "response_format": "verbose_json"},
        files=(("file", "audio.mp3"),),
    ),
    Example(
        TRANSCRIPTIONS,
        "Default, a PNG as audio.mp3",
        {"model": "gpt-4o-transcribe"},
        files=(("file", "audio.mp3"),),
        contents={"audio.mp3": OTTER_PNG},
        expect=415,
        param="file",
        reason="could not decode audio 'audio.mp3'",
    ),
    # POST /v1/audio/translations
    Example(TRANSLATIONS, "schema example", {"model": "whisper-1"}, files=(("file", "file"),)),
    Example(TRANSLATIONS, "Default", {"model": "whisper-1"}, files=(("file", "german.m4a"),)),
    Example(
        TRANSLATIONS,
        "Default, a PNG as german.m4a",
        {"model": "whisper-1"},
        files=(("file", "german.m4a"),),
        contents={"german.m4a": OTTER_PNG},
        expect=415,
        param="file",
        reason="could not decode audio 'german.m4a'",
    ),
    # POST /v1/images/generations
    Example(
        GENERATIONS,
        "schema example",
        {
            "model": "gpt-image-2.5-flare",
            "prompt": OTTER,
            "background": "transparent",
            "moderation": "low",
            "n": 1,
            "output_compression": 100,
            "output_format": "png",
            "partial_images": 1,
            "quality": "medium",
            "size": "1024x1024",
            "style": "vivid",
            "user": "user-1234",
        },
        json=True,
        # Stable Diffusion draws opaque RGB, and previews exist only in streams: both reported as not applied.
        ignored=("background", "partial_images", "style", "moderation"),
    ),
    Example(
        GENERATIONS,
        "Generate image",
        {"model": "gpt-image-2.5-flare", "prompt": OTTER, "n": 1, "size": "1024x1024"},
        json=True,
    ),
    Example(
        GENERATIONS,
        "Streaming",
        {"model": "gpt-image-2.5-flare", "prompt": OTTER, "n": 1, "size": "1024x1024", "stream": True},
        json=True,
    ),
    # POST /v1/images/edits
    Example(
        EDITS,
        "schema example (JSON)",
        {
            "images": [{"image_url": "https://example.com/source-image.png"}],
            "prompt": "Add a watercolor effect to this image",
            "model": "gpt-image-1.5",
            "quality": "high",
            "size": "1024x1024",
        },
        json=True,
        # A placeholder host: remote images are fetched only from hosts the operator allows.
        expect=400,
        param="images[0].image_url",
        reason="example.com",
    ),
    Example(
        EDITS,
        "schema example (JSON), the image as a data: URL",
        {
            "images": [{"image_url": SOURCE_IMAGE_URL}],
            "prompt": "Add a watercolor effect to this image",
            "model": "gpt-image-1.5",
            "quality": "high",
            "size": "1024x1024",
        },
        json=True,
    ),
    Example(
        EDITS,
        "schema example (JSON), a file_id",
        {
            "images": [{"file_id": "file-abc123"}],
            "prompt": "Add a watercolor effect to this image",
            "model": "gpt-image-1.5",
            "quality": "high",
            "size": "1024x1024",
        },
        json=True,
        expect=400,
        param="images[0].file_id",
        reason="no Files API",
    ),
    Example(
        EDITS,
        "Edit image",
        {"model": "gpt-image-1.5", "prompt": GIFT_BASKET},
        files=tuple(("image[]", name) for name in GIFT_ITEMS),
    ),
    Example(
        EDITS,
        "Streaming",
        {"model": "gpt-image-1.5", "prompt": GIFT_BASKET, "stream": "true"},
        files=tuple(("image[]", name) for name in GIFT_ITEMS),
    ),
    # POST /v1/images/variations
    Example(
        VARIATIONS,
        "schema example",
        {"model": "dall-e-2", "n": "1", "response_format": "url", "size": "1024x1024", "user": "user-1234"},
        files=(("image", "image"),),
    ),
    Example(VARIATIONS, "Default", {"n": "2", "size": "1024x1024"}, files=(("image", "otter.png"),)),
]


def send(http: httpx.Client, example: Example) -> httpx.Response:
    if example.json:
        return http.post(example.path, json=example.fields)
    files = [
        (part, (name, example.contents.get(name, FILES[name]), "application/octet-stream"))
        for part, name in example.files
    ]
    return http.post(example.path, data=example.fields, files=files)


def sse_events(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    events = []
    for block in response.text.split("\n\n"):
        data = [line[len("data:") :].strip() for line in block.splitlines() if line.startswith("data:")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


# --- what each 200 must carry ---------------------------------------------------------------------------------


def check_speech(example: Example, response: httpx.Response) -> None:
    if example.fields.get("stream_format") == "sse":
        events = sse_events(response)
        *deltas, done = events
        assert deltas and all(e["type"] == "speech.audio.delta" for e in deltas), [e["type"] for e in events]
        assert done["type"] == "speech.audio.done" and done["usage"]["output_tokens"] > 0
        audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    else:
        assert response.headers["content-type"] == "audio/mpeg"  # OpenAI's default: mp3
        audio = response.content
    samples, _ = sf.read(io.BytesIO(audio))
    assert samples.size > 0
    if "instructions" in example.fields:  # SpeechT5 takes none: accepted, and the answer says so
        assert "instructions" in response.headers["x-modelserve-ignored"]


def check_transcript(example: Example, response: httpx.Response) -> None:
    if example.fields.get("stream") == "true":
        events = sse_events(response)
        *deltas, done = events
        assert all(e["type"] == "transcript.text.delta" for e in deltas), [e["type"] for e in events]
        assert done["type"] == "transcript.text.done" and done["text"] == "".join(e["delta"] for e in deltas)
        return
    body = response.json()
    assert isinstance(body["text"], str)
    if example.fields.get("include[]") == ["logprobs"]:
        assert body["logprobs"] and all({"token", "logprob", "bytes"} <= set(t) for t in body["logprobs"])
    if example.fields.get("response_format") == "verbose_json":
        assert body["task"] == "transcribe" and body["duration"] == pytest.approx(2.0, abs=0.05)
        wanted = set(example.fields["timestamp_granularities[]"])
        assert ("words" in body) == ("word" in wanted) and ("segments" in body) == ("segment" in wanted)
        assert isinstance(body.get("words", body.get("segments")), list)


def check_images(example: Example, response: httpx.Response) -> None:
    kind = {GENERATIONS: "image_generation", EDITS: "image_edit"}.get(example.path)
    if str(example.fields.get("stream")).lower() == "true":
        events = sse_events(response)
        assert events[-1]["type"] == f"{kind}.completed", [e["type"] for e in events]
        assert {e["type"] for e in events} <= {f"{kind}.partial_image", f"{kind}.completed"}
        images = [events[-1]["b64_json"]]
    else:
        body = response.json()
        assert len(body["data"]) == int(example.fields.get("n", 1))
        if example.fields.get("response_format") == "url" or example.path == VARIATIONS:
            # Variations answer as dall-e-2 did: links, served by the platform itself.
            images = [base64.b64encode(httpx.get(item["url"]).content).decode() for item in body["data"]]
        else:
            images = [item["b64_json"] for item in body["data"]]
    for encoded in images:
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        made_width, made_height = map(int, response.headers["x-modelserve-image-size"].split("x"))
        assert image.format == "PNG" and made_width * made_height <= MAX_PIXELS
    if len(example.files) > 1:
        # The four 64x64 items are redrawn together, as a 2x2 sheet scaled into the pixel limit.
        assert response.headers["x-modelserve-image-size"] == "96x96"


CHECKS = {
    SPEECH: check_speech,
    TRANSCRIPTIONS: check_transcript,
    TRANSLATIONS: check_transcript,
    GENERATIONS: check_images,
    EDITS: check_images,
    VARIATIONS: check_images,
}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.id)
def test_every_reference_example_is_answered(http, example):
    response = send(http, example)
    if example.expect == 200:
        assert response.status_code == 200, response.text
        CHECKS[example.path](example, response)
        reported = response.headers.get("x-modelserve-ignored", "").split(", ")
        assert all(name in reported for name in example.ignored), reported
        return
    assert response.status_code == example.expect, response.text
    error = response.json()["error"]
    assert error["param"] == example.param and example.reason in error["message"], error


def test_the_table_covers_the_six_endpoints_and_names_why_each_refusal_is_refused():
    assert {example.path for example in EXAMPLES} == set(CHECKS)
    assert all(example.param and example.reason for example in EXAMPLES if example.expect != 200)
    assert len({example.id for example in EXAMPLES}) == len(EXAMPLES)


# --- the same examples through the official openai SDK -------------------------------------------------------


@pytest.fixture(scope="module")
def sdk(platform):
    return openai.OpenAI(
        base_url=platform.rest_url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S
    )


def test_sdk_speech_default_and_sse(sdk):
    with sdk.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=FOX
    ) as reply:
        assert reply.headers["content-type"] == "audio/mpeg" and len(reply.read()) > 0
    with sdk.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=FOX, stream_format="sse"
    ) as reply:
        events = list(openai.Stream(cast_to=object, response=reply.http_response, client=sdk))
    assert events[-1]["type"] == "speech.audio.done"


def test_sdk_transcription_examples(sdk):
    audio = ("audio.mp3", FILES["audio.mp3"])
    logprobs = sdk.audio.transcriptions.create(
        file=audio, model="gpt-4o-transcribe", response_format="json", include=["logprobs"]
    )
    assert logprobs.logprobs
    words = sdk.audio.transcriptions.create(
        file=audio, model="whisper-1", response_format="verbose_json", timestamp_granularities=["word"]
    )
    assert words.words is not None and words.duration == pytest.approx(2.0, abs=0.05)
    events = list(sdk.audio.transcriptions.create(file=audio, model="gpt-4o-mini-transcribe", stream=True))
    assert events[-1].type == "transcript.text.done"
    translation = sdk.audio.translations.create(file=("german.m4a", FILES["german.m4a"]), model="whisper-1")
    assert isinstance(translation.text, str)


def test_sdk_image_examples(sdk):
    generated = sdk.images.generate(model="gpt-image-2.5-flare", prompt=OTTER, n=1, size="1024x1024")
    assert generated.data[0].b64_json
    edited = sdk.images.edit(
        model="gpt-image-1.5",
        image=[(name, FILES[name], "image/png") for name in GIFT_ITEMS],
        prompt=GIFT_BASKET,
    )
    assert edited.data[0].b64_json
    streamed = list(
        sdk.images.edit(
            model="gpt-image-1.5",
            image=[(name, FILES[name], "image/png") for name in GIFT_ITEMS],
            prompt=GIFT_BASKET,
            stream=True,
        )
    )
    assert streamed[-1].type == "image_edit.completed"
    variations = sdk.images.create_variation(
        image=("otter.png", OTTER_PNG, "image/png"), n=2, size="1024x1024"
    )
    assert len(variations.data) == 2 and all(item.url for item in variations.data)
