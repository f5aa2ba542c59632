"""POST /v1/audio/speech against the official openai SDK's own types: every parameter of `speech_create_params`
and every value its Literals list is honoured, or refused with a 4xx naming it, or (instructions) accepted and
reported as not applied in the `x-modelserve-ignored` header. Never silently dropped.

The SDK's types are read at test time, so a parameter or value a newer SDK adds fails here until it is handled.
"""

import asyncio
import base64
import io
import threading
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

import av
import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import yaml
from openai.helpers import local_audio_player
from openai.types.audio import speech_create_params
from openai.types.audio.speech_model import SpeechModel

from services.kit.audio import resample
from services.tts.rest import IGNORED_HEADER, VOICE_HEADER
from services.tts.schemas import SpeechRequest
from services.tts.settings import TTSSettings
from services.tts.voices import OPENAI_VOICES, VoiceBank

REPO = Path(__file__).resolve().parents[2]
PARAMS = get_type_hints(speech_create_params.SpeechCreateParams)
TEXT = "Conformance check."
MODEL_RATE = 16000
PCM_RATE = 24000  # what OpenAI's pcm is, and what the SDK's LocalAudioPlayer plays it at


def literal_values(annotation) -> list[str]:
    """The strings a Literal (possibly inside a Union) allows."""
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    if get_origin(annotation) is Union:
        return [value for arg in get_args(annotation) for value in literal_values(arg)]
    return []


SDK_MODELS = literal_values(SpeechModel)
SDK_VOICES = literal_values(speech_create_params.Voice)
SDK_FORMATS = literal_values(PARAMS["response_format"])
SDK_STREAM_FORMATS = literal_values(PARAMS["stream_format"])


@pytest.fixture(scope="module")
def client(tts_server):
    return openai.OpenAI(base_url=tts_server.rest_url + "/v1", api_key="x", max_retries=0)


def create(client, **params):
    """The SDK's call, with the raw response for its headers; `seed` (ours) pins SpeechT5's dropout."""
    params.setdefault("model", "tts-1")
    params.setdefault("voice", "alloy")
    params.setdefault("input", TEXT)
    seed = params.pop("seed", 3)
    return client.audio.speech.with_raw_response.create(**params, extra_body={"seed": seed})


def wav_samples(content: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(content), dtype="float32")
    return samples, rate


def aac_samples(content: bytes) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(content), format="aac") as container:
        stream = container.streams.audio[0]
        return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)]), stream.rate


def decoded(content: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        return np.frombuffer(content, "<i2").astype(np.float32) / 32768, PCM_RATE
    return aac_samples(content) if fmt == "aac" else wav_samples(content)


def sse_events(client, **params) -> list[dict]:
    """The response parsed as server-sent events by the SDK's own decoder."""
    params.setdefault("model", "gpt-4o-mini-tts")
    params.setdefault("voice", "alloy")
    params.setdefault("input", TEXT)
    with client.audio.speech.with_streaming_response.create(
        **params, stream_format="sse", extra_body={"seed": params.pop("seed", 3)}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(openai.Stream(cast_to=object, response=response.http_response, client=client))


def refusal(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert 400 <= caught.value.status_code < 500
    return caught.value


# -- the parameter list itself ---------------------------------------------------------------------------------


def test_the_sdk_parameters_are_the_ones_this_file_covers():
    """A parameter a newer SDK adds must be handled (and tested) here before this passes."""
    assert set(PARAMS) == {"input", "model", "voice", "instructions", "response_format", "speed", "stream_format"}
    assert set(PARAMS) <= set(SpeechRequest.model_fields)
    assert set(SDK_VOICES) == set(OPENAI_VOICES)
    assert set(SDK_STREAM_FORMATS) == {"audio", "sse"}


# -- model -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", SDK_MODELS)
def test_every_sdk_model_name_is_served(client, model):
    response = create(client, model=model, response_format="wav")
    assert response.status_code == 200 and wav_samples(response.content)[0].size > 0


def test_an_unknown_model_is_refused_naming_model(client):
    error = refusal(lambda: create(client, model="tts-2"))
    assert error.status_code == 400 and error.param == "model" and "unknown model 'tts-2'" in error.message


# -- input -----------------------------------------------------------------------------------------------------


def test_input_over_openais_4096_characters_is_refused_naming_input(client):
    assert create(client, input="a" + " " * 4095, response_format="pcm").status_code == 200
    error = refusal(lambda: create(client, input="a" * 4097))
    assert error.param == "input" and "4097 characters" in error.message


# -- voice -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listed_voices(tts_server) -> dict[str, str]:
    """Every listed name -> the installed voice it selects."""
    data = httpx.get(tts_server.rest_url + "/v1/voices").json()["data"]
    return {v["id"]: v.get("alias_of", v["id"]) for v in data}


@pytest.mark.parametrize("voice", SDK_VOICES)
def test_every_openai_voice_speaks_the_installed_voice_it_is_listed_as(client, listed_voices, voice):
    installed = listed_voices[voice]
    response = create(client, voice=voice, response_format="wav", stream_format="audio")
    assert response.status_code == 200 and response.headers[VOICE_HEADER] == installed
    # The same seed in the installed voice gives the same bytes: the alias selected that x-vector.
    assert response.content == create(client, voice=installed, response_format="wav").content


def test_the_voice_object_form_and_an_unknown_voice(client):
    response = create(client, voice={"id": "echo"}, response_format="wav")
    assert response.headers[VOICE_HEADER] == "echo"
    error = refusal(lambda: create(client, voice={"id": "voice_1234"}))
    assert error.param == "voice" and "unknown voice 'voice_1234'" in error.message


def test_production_voices_cover_every_openai_name(tmp_path):
    """The deployment's voices (CMU ARCTIC speakers, clients/models_fetch.py) with the ConfigMap's mapping, and
    the same voices with no mapping at all: every OpenAI name selects an installed voice either way."""
    kustomization = yaml.safe_load((REPO / "k8s/base/tts/kustomization.yaml").read_text())
    literals = dict(item.split("=", 1) for item in kustomization["configMapGenerator"][0]["literals"])
    configured = TTSSettings(voice_aliases=literals["TTS_VOICE_ALIASES"]).voice_aliases
    speakers = ["awb", "bdl", "clb", "jmk", "ksp", "rms", "slt"]
    rng = np.random.default_rng(0)
    for name in speakers:
        np.save(tmp_path / f"{name}.npy", rng.standard_normal(512).astype(np.float32))
    mapped = VoiceBank(tmp_path, 512, aliases=configured)
    assert mapped.aliases == configured and set(configured) == set(OPENAI_VOICES)
    assert {mapped.resolve(name) for name in ("coral", "nova", "sage", "shimmer", "marin")} <= {"clb", "slt"}
    unmapped = VoiceBank(tmp_path, 512)
    assert {name: unmapped.resolve(name) for name in OPENAI_VOICES} == dict(
        zip(OPENAI_VOICES, speakers * 2, strict=False)
    )


def test_aliases_that_name_no_installed_voice_stop_the_start(tmp_path):
    np.save(tmp_path / "bdl.npy", np.ones(512, dtype=np.float32))
    with pytest.raises(ValueError, match="'alloy' maps to 'slt', which is not installed"):
        VoiceBank(tmp_path, 512, aliases=TTSSettings(voice_aliases="alloy=slt").voice_aliases)
    with pytest.raises(ValueError, match="'bdl' has the name of an installed voice"):
        VoiceBank(tmp_path, 512, aliases={"bdl": "bdl"})


# -- instructions ----------------------------------------------------------------------------------------------


def test_instructions_are_accepted_and_reported_as_not_applied(client):
    plain = create(client, model="gpt-4o-mini-tts", response_format="wav")
    instructed = create(client, model="gpt-4o-mini-tts", response_format="wav", instructions="Speak cheerfully.")
    assert instructed.status_code == 200
    assert instructed.headers[IGNORED_HEADER] == "instructions"
    assert IGNORED_HEADER not in plain.headers
    assert instructed.content == plain.content  # what the header says: the audio did not change
    events = sse_events(client, instructions="Whisper.")
    assert events[-1]["type"] == "speech.audio.done"


def test_a_voice_next_to_an_own_embedding_is_reported_as_not_applied(client, models_dir):
    vector = np.load(models_dir / "tts" / "voices" / "echo.npy").tolist()
    response = client.audio.speech.with_raw_response.create(
        model="tts-1", voice="nova", input=TEXT, response_format="wav", extra_body={"speaker_embedding": vector}
    )
    assert response.headers[IGNORED_HEADER] == "voice" and VOICE_HEADER not in response.headers


def test_over_long_instructions_are_refused_naming_instructions(client):
    error = refusal(lambda: create(client, instructions="x" * 4097))
    assert error.param == "instructions"


# -- response_format -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(client) -> np.ndarray:
    """The seeded speech as a whole wav file, at the model's 16 kHz."""
    response = create(client, response_format="wav", stream_format="audio")
    samples, rate = wav_samples(response.content)
    assert rate == MODEL_RATE
    return samples


@pytest.mark.parametrize("fmt", SDK_FORMATS)
def test_every_response_format_carries_the_speech_at_the_rate_it_states(client, reference, fmt):
    response = create(client, response_format=fmt)
    assert response.status_code == 200
    samples, rate = decoded(response.content, fmt)
    assert int(response.headers["x-sample-rate"]) == rate
    assert rate == (PCM_RATE if fmt == "pcm" else MODEL_RATE)
    lossy = fmt in ("mp3", "opus", "aac")  # encoder delay and a padded last frame
    assert samples.size / rate == pytest.approx(reference.size / MODEL_RATE, abs=0.15 if lossy else 1e-9)
    if fmt == "aac":
        assert response.content[:2] == b"\xff\xf1"  # ADTS sync word: MPEG-4 AAC, no CRC


def test_pcm_is_24khz_s16le_as_the_sdks_local_audio_player_plays_it(client, reference):
    """LocalAudioPlayer reads the bytes as int16 and plays them at 24 kHz: the audio must last as long as the
    16 kHz wav and be the same sound (16 kHz samples played at 24 kHz would run 1.5x too fast)."""
    assert local_audio_player.SAMPLE_RATE == PCM_RATE
    whole = client.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="pcm", extra_body={"seed": 3, "stream": False}
    )
    assert len(whole.content) == reference.size / MODEL_RATE * PCM_RATE * 2
    played = asyncio.run(local_audio_player.LocalAudioPlayer()._tts_response_to_buffer(whole)).reshape(-1)
    assert played.size / local_audio_player.SAMPLE_RATE == pytest.approx(reference.size / MODEL_RATE)
    expected = resample(reference, MODEL_RATE, PCM_RATE)
    assert np.corrcoef(played, expected)[0, 1] > 0.999


def test_an_unknown_format_is_refused_naming_response_format(client):
    error = refusal(lambda: create(client, response_format="wma"))
    assert error.param == "response_format" and "unsupported format 'wma'" in error.message


# -- speed -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("speed", [0.25, 4.0])
def test_speed_bounds_are_honoured(client, reference, speed):
    samples, _ = wav_samples(create(client, speed=speed, response_format="wav").content)
    assert samples.size / reference.size == pytest.approx(1 / speed, rel=0.05)


@pytest.mark.parametrize("speed", [0.24, 4.01])
def test_speed_outside_the_bounds_is_refused_naming_speed(client, speed):
    assert refusal(lambda: create(client, speed=speed)).param == "speed"


# -- stream_format ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", SDK_FORMATS)
def test_stream_format_audio_is_the_raw_audio_as_by_default(client, fmt):
    raw = create(client, response_format=fmt, stream_format="audio")
    assert raw.headers["content-type"].startswith("audio/")
    default = create(client, response_format=fmt).content
    # Compared decoded: an Ogg stream's serial number is random.
    assert np.array_equal(decoded(raw.content, fmt)[0], decoded(default, fmt)[0])


@pytest.mark.parametrize("fmt", SDK_FORMATS)
def test_sse_deltas_join_into_the_audio_and_done_reports_usage(client, fmt):
    events = sse_events(client, response_format=fmt, input="First part. Second part.")
    deltas, done = events[:-1], events[-1]
    assert {e["type"] for e in deltas} == {"speech.audio.delta"} and len(deltas) >= 1
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    whole = create(client, response_format=fmt, input="First part. Second part.")
    if fmt in ("wav", "pcm"):  # streamed sentence by sentence: one delta each
        assert len(deltas) == 2
    assert np.array_equal(decoded(audio, fmt)[0], decoded(whole.content, fmt)[0])


def test_an_unknown_stream_format_is_refused_naming_stream_format(client):
    error = refusal(lambda: create(client, stream_format="json"))
    assert error.param == "stream_format"


def test_unknown_fields_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, extra_body={"emotion": "joy"})
    assert caught.value.param == "emotion"


# -- streaming by default --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "stream_format"), [("pcm", None), ("wav", "audio"), ("pcm", "sse")])
def test_first_audio_arrives_before_the_last_sentence_is_made(client, runner, patch_synthesize, fmt, stream_format):
    """Plain SDK calls (no extension): the last sentence's synthesis waits until the client holds audio, so
    only a response that streams by default gets past it (otherwise the wait times out)."""
    text = "One is first. Two is next. Three ends it."
    last_sentence = tuple(runner.sentences(text)[-1].token_ids)
    first_audio = threading.Event()
    held_until_client_had_audio = []

    def hold_last_sentence(token_ids):
        if last_sentence in map(tuple, token_ids):
            held_until_client_had_audio.append(first_audio.wait(timeout=20))

    patch_synthesize(hold_last_sentence)
    params = {"stream_format": stream_format} if stream_format else {}
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format=fmt, **params
    ) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        pieces = response.iter_bytes()
        first = next(pieces)
        first_audio.set()
        rest = b"".join(pieces)
    assert first and rest
    assert held_until_client_had_audio == [True]


def test_whole_file_answers_state_length_and_duration(client, reference):
    response = client.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav", extra_body={"seed": 3, "stream": False}
    )
    assert int(response.headers["content-length"]) == len(response.content)
    assert float(response.headers["x-audio-duration"]) == pytest.approx(reference.size / MODEL_RATE, abs=1e-3)
    streamed = create(client, response_format="wav")  # streamed by default: the header's sizes say "unknown"
    assert streamed.content[4:8] == b"\xff\xff\xff\xff" and "content-length" not in streamed.headers
    assert np.array_equal(wav_samples(streamed.content)[0], reference)
