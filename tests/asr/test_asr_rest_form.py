"""OpenAI's transcription form as the transport-neutral request (services/asr/rest.py), without a model: what
each response format asks the transcription to compute, and the form's refusals, each naming its field."""

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from services.asr.rest import read_transcription
from services.kit.errors import InvalidArgument

WAV = ("a.wav", b"RIFF....WAVE", "audio/wav")


@pytest.fixture(scope="module")
def client():
    app = FastAPI()

    @app.post("/v1/audio/{route}")
    async def read(route: str, request: Request):
        task = "translate" if route == "translations" else "transcribe"
        try:
            transcription = await read_transcription(request, task)
        except InvalidArgument as refused:
            return JSONResponse({"field": refused.field, "message": refused.message}, status_code=400)
        return {
            **transcription.model_dump(exclude={"file", "samples"}),
            "filename": transcription.file.filename,
            "response_format": request.state.rendering.response_format,
            "segments_listed": request.state.rendering.segments,
        }

    return TestClient(app)


@pytest.mark.parametrize(
    "form, timestamps, logprobs, segments_listed",
    [
        ({}, "none", False, True),
        ({"response_format": "text"}, "none", False, True),
        ({"response_format": "srt"}, "segment", False, True),
        ({"response_format": "vtt"}, "segment", False, True),
        ({"response_format": "verbose_json"}, "segment", False, True),
        ({"response_format": "verbose_json", "timestamp_granularities[]": "word"}, "word", False, False),
        (
            {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]},
            "word",
            False,
            True,
        ),
        ({"include[]": "logprobs"}, "none", True, True),
    ],
)
def test_response_formats_say_what_to_compute(client, form, timestamps, logprobs, segments_listed):
    response = client.post(
        "/v1/audio/transcriptions", files={"file": WAV}, data={"model": "whisper-1", **form}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "transcribe" and body["filename"] == "a.wav"
    assert (body["timestamps"], body["logprobs"], body["segments_listed"]) == (
        timestamps,
        logprobs,
        segments_listed,
    )
    assert body["response_format"] == form.get("response_format", "json")


def test_translations_take_the_translate_task_and_its_own_fields(client):
    body = client.post("/v1/audio/translations", files={"file": WAV}, data={"language": "de"}).json()
    assert (body["task"], body["language"]) == ("translate", "de")
    refused = client.post("/v1/audio/translations", files={"file": WAV}, data={"include[]": "logprobs"})
    assert refused.status_code == 400 and refused.json()["field"] == "include[]"
    assert "not a field of /v1/audio/translations" in refused.json()["message"]


@pytest.mark.parametrize(
    "data, files, field, message",
    [
        ({"keywords": "x"}, {"file": WAV}, "keywords", "keywords are not offered"),
        (
            {"response_format": "srt", "include[]": "logprobs"},
            {"file": WAV},
            "include",
            "needs response_format",
        ),
        ({"timestamp_granularities[]": "word"}, {"file": WAV}, "timestamp_granularities", "verbose_json"),
        ({"model": "whisper-1"}, None, "file", "file: upload the audio as a file field named file"),
        ({"chunking_strategy[type][x]": "server_vad"}, {"file": WAV}, "chunking_strategy[type][x]", "send"),
    ],
)
def test_refusals_name_the_field(client, data, files, field, message):
    response = client.post("/v1/audio/transcriptions", files=files, data=data)
    assert response.status_code == 400
    assert response.json()["field"] == field and message in response.json()["message"]
