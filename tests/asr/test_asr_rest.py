"""The OpenAI audio API over a real server (REST on loopback), called with the official `openai` SDK."""

import concurrent.futures
import re

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy.signal import resample_poly

from services.asr.service import create_service
from services.kit.audio import decode_audio
from services.kit.testing import ServerThread


@pytest.fixture(scope="module")
def server(make_asr_settings):
    # A long batching window so that concurrent requests reliably meet in one batch.
    settings = make_asr_settings(max_wait_ms=300, wait_when_idle=True)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.rest_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(
    server, path="/v1/audio/transcriptions", data=None, content=b"", filename="clip.wav"
) -> httpx.Response:
    files = {"file": (filename, content, "application/octet-stream")}
    return httpx.post(server.rest_url + path, data=data or {}, files=files, timeout=120)


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server.rest_url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_sdk_transcription_json(client, audio_file):
    result = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", audio_file(3, seed=1)))
    assert isinstance(result.text, str) and result.text
    assert result.decoding == "assisted"  # alone on the server: the speculative path


def test_sdk_text_formats_and_served_model_name(client, audio_file):
    data = audio_file(4, seed=2)
    text = client.audio.transcriptions.create(model="whisper", file=("a.wav", data), response_format="text")
    json_text = client.audio.transcriptions.create(model="whisper", file=("a.wav", data)).text
    assert text == json_text
    srt = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), response_format="srt")
    assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n\S", srt)
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:") and "-->" in vtt


def test_sdk_verbose_json_has_language_duration_and_segments(client, audio_file):
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("clip.flac", audio_file(5, seed=3, fmt="FLAC")),
        response_format="verbose_json",
        language="de",
    )
    assert result.language == "german" and result.duration == pytest.approx(5.0, abs=0.01)
    assert result.segments and all(0 <= s.start <= s.end <= 5.0 for s in result.segments)
    assert " ".join(s.text for s in result.segments).split() == result.text.split()


def test_sdk_long_audio_beyond_30_seconds(client, audio_file):
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("long.ogg", audio_file(42, seed=4, fmt="OGG")),
        response_format="verbose_json",
    )
    assert result.duration == pytest.approx(42.0, abs=0.05)
    assert result.segments[-1].end > 30


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks translations deprecated
def test_sdk_translation_and_prompt(client, audio_file):
    data = audio_file(3, seed=5)
    translated = client.audio.translations.create(model="whisper-1", file=("a.wav", data))
    transcribed = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data))
    assert translated.text and translated.text != transcribed.text  # the task token changes the decoding
    prompted = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), prompt="weather today"
    )
    assert prompted.text != transcribed.text


def test_stereo_44k_file_is_folded_resampled_and_transcribed(client, audio, to_file):
    mono = audio(3, seed=6) * 0.5
    stereo = np.stack([mono, mono * 0.2], axis=1)
    stereo_44k = resample_poly(stereo, 441, 160, axis=0).astype(np.float32)
    upload = to_file(stereo_44k, 44100, "WAV")
    # What the server must hear: the kit's 16 kHz mono decoding of that file, sent as float samples unchanged.
    expected_input = to_file(decode_audio(upload), 16000, "WAV", "FLOAT")
    got = client.audio.transcriptions.create(
        model="whisper-1", file=("b.wav", upload), response_format="verbose_json"
    )
    want = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", expected_input), response_format="verbose_json"
    )
    assert got.text == want.text and got.duration == pytest.approx(3.0, abs=0.01)


def test_forced_paths_give_the_same_text_and_say_which_ran(server, audio_file):
    data = audio_file(6, seed=7)
    plain = post(server, data={"decoding": "plain", "language": "en"}, content=data)
    assisted = post(server, data={"decoding": "assisted", "language": "en"}, content=data)
    assert plain.json()["decoding"] == "plain" and plain.headers["x-asr-decoding"] == "plain"
    assert assisted.json()["decoding"] == "assisted"
    assert plain.json()["text"] == assisted.json()["text"]


@pytest.mark.parametrize("decoding", ["assisted", "plain"])
def test_temperature_samples_on_either_path(server, audio_file, decoding):
    data = audio_file(3, seed=12)
    greedy = post(server, data={"decoding": decoding, "language": "en"}, content=data).json()["text"]
    sampled = [
        post(server, data={"decoding": decoding, "language": "en", "temperature": "1.0"}, content=data).json()
        for _ in range(2)
    ]
    assert all(r["decoding"] == decoding and r["text"] for r in sampled)
    assert any(r["text"] != greedy for r in sampled)


def test_sdk_passes_the_decoding_extension(client, audio_file):
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", audio_file(2, seed=8)), extra_body={"decoding": "plain"}
    )
    assert result.decoding == "plain"


def test_load_adaptive_decoding_batches_under_load_with_identical_text(server, audio_file):
    clips = [audio_file(2 + i % 3, seed=50 + i) for i in range(8)]
    alone = [post(server, content=clip).json() for clip in clips[:3]]
    assert {r["decoding"] for r in alone} == {"assisted"}
    plain_before = metric(server, "asr_requests_total", path="plain")
    with concurrent.futures.ThreadPoolExecutor(len(clips)) as pool:
        together = list(pool.map(lambda clip: post(server, content=clip), clips))
    assert all(r.status_code == 200 for r in together)
    assert {r.json()["decoding"] for r in together} == {"plain"}  # 8 waiting > threshold 4
    assert [r.json()["text"] for r in together[:3]] == [r["text"] for r in alone]
    assert metric(server, "asr_requests_total", path="plain") == plain_before + 8


def test_metrics_count_forward_passes_drafts_and_speed(server, audio_file):
    post(server, data={"decoding": "assisted"}, content=audio_file(3, seed=9))
    drafted = metric(server, "asr_draft_tokens_total")
    accepted = metric(server, "asr_draft_tokens_accepted_total")
    assert drafted > 0 and 0 < accepted <= drafted
    assert metric(server, "asr_draft_acceptance_rate") == pytest.approx(accepted / drafted, rel=1e-6)
    assert metric(server, "asr_main_forward_passes_total", path="assisted") > 0
    assert metric(server, "asr_decoded_tokens_total", path="assisted") > 0
    assert metric(server, "asr_decoded_tokens_per_second", path="assisted") > 0
    assert metric(server, "asr_audio_seconds_per_compute_second", path="assisted") > 0
    assert metric(server, "asr_audio_seconds_total", path="assisted") >= 3


def test_models_lists_the_whisper_model(server):
    data = httpx.get(server.rest_url + "/v1/models").json()["data"]
    assert any(m["service"] == "asr" and m["id"] == "whisper" for m in data)


@pytest.mark.parametrize(
    "data,content,status,words",
    [
        ({}, b"", 400, "empty"),
        ({}, b"definitely not audio" * 50, 415, "readable formats: WAV, FLAC, OGG"),
        ({"language": "klingon"}, None, 400, "language"),
        ({"response_format": "docx"}, None, 400, "response_format"),
        ({"temperature": "1.5"}, None, 400, "temperature"),
        ({"temperature": "warm"}, None, 400, "temperature"),
        ({"decoding": "fastest"}, None, 400, "decoding"),
        ({"model": "whisper-large-v3"}, None, 404, "whisper-large-v3"),
        ({"timestamp_granularities[]": "word"}, None, 400, "timestamp_granularities"),
        ({"stream": "true", "response_format": "srt"}, None, 400, "stream"),
        ({"known_speaker_names[]": "agent"}, None, 400, "known_speaker_names[]"),
    ],
)
def test_bad_requests_name_the_problem(server, audio_file, data, content, status, words):
    response = post(server, data=data, content=audio_file(1, seed=10) if content is None else content)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_over_long_audio_is_413_naming_limit_and_length(server, audio_file):
    response = post(server, content=audio_file(91, seed=11, rate=8000))
    assert response.status_code == 413
    assert "91.0 s" in response.json()["error"]["message"] and "90 s" in response.json()["error"]["message"]


def test_missing_file_is_400_naming_it(server):
    response = httpx.post(
        server.rest_url + "/v1/audio/transcriptions", data={"model": "whisper-1"}, timeout=30
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


def test_sdk_raises_its_own_errors_for_our_4xx(client):
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.audio.transcriptions.create(model="whisper-1", file=("empty.wav", b""))
