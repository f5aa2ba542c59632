"""POST /v1/audio/speech over HTTP and through the official OpenAI SDK, against the tiny SpeechT5."""

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import av
import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from services.kit.audio import resample, supported_output_formats
from services.tts.voices import OPENAI_VOICES

SAMPLES_PER_FRAME = 256  # HiFi-GAN hop
PAUSE_SAMPLES = 4000  # 250 ms at 16 kHz


def speak(server, timeout=60, **body) -> httpx.Response:
    body.setdefault("input", "Hello world.")
    return httpx.post(f"{server.rest_url}/v1/audio/speech", json=body, timeout=timeout)


def decode(content: bytes) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(content), dtype="int16")


def decode_aac(content: bytes) -> tuple[np.ndarray, int]:
    """ADTS AAC through FFmpeg (libsndfile cannot read AAC)."""
    with av.open(io.BytesIO(content), format="aac") as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(stream)])
        return samples, stream.rate


def frames(runner, text: str) -> int:
    """Spectrogram frames the tiny model makes for one sentence: the (min = max) length ratio per token."""
    return len(runner.sentences(text)[0].token_ids) * int(runner.settings.max_len_ratio)


@pytest.fixture(scope="module")
def client(tts_server):
    return openai.OpenAI(base_url=f"{tts_server.rest_url}/v1", api_key="not-needed", max_retries=0)


def test_wav_is_16khz_mono_speech_of_the_sentence_length(tts_server, runner):
    response = speak(tts_server, response_format="wav", voice="alloy", stream=False)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["content-type"] == "audio/wav"
    samples, rate = decode(response.content)
    assert rate == 16000 and samples.ndim == 1
    assert samples.size == frames(runner, "Hello world.") * SAMPLES_PER_FRAME
    assert np.abs(samples).max() > 100  # not silence
    assert float(response.headers["x-audio-duration"]) == pytest.approx(samples.size / 16000, abs=1e-3)


def test_default_format_is_mp3_like_openai(tts_server):
    response = speak(tts_server)
    assert response.headers["content-type"] == "audio/mpeg"
    samples, rate = decode(response.content)
    assert rate == 16000 and samples.size > 0


@pytest.mark.parametrize("fmt", supported_output_formats())
def test_every_supported_format_carries_the_same_audio(tts_server, fmt):
    reference, _ = decode(speak(tts_server, response_format="wav", seed=11).content)
    content = speak(tts_server, response_format=fmt, seed=11).content
    if fmt == "pcm":  # OpenAI's: 24 kHz
        expected = resample(reference.astype(np.float32) / 32768, 16000, 24000)
        samples = np.frombuffer(content, "<i2").astype(np.float32) / 32768
        assert np.abs(samples - expected).max() < 2e-3  # 16-bit rounding twice
        return
    samples, rate = decode_aac(content) if fmt == "aac" else decode(content)
    if fmt in ("wav", "flac"):  # lossless (libsndfile's float -> int16 rounds differently per format)
        assert np.abs(samples.astype(int) - reference).max() <= 1
    else:  # lossy codecs add encoder delay/padding and may resample
        assert samples.size / rate == pytest.approx(reference.size / 16000, abs=0.1)


def test_sentences_are_joined_with_a_pause_and_longer_text_is_longer(tts_server, runner):
    one, _ = decode(speak(tts_server, input="One two three.", response_format="wav").content)
    two, _ = decode(speak(tts_server, input="One two three. Four five.", response_format="wav").content)
    expected = (
        frames(runner, "One two three.") + frames(runner, "Four five.")
    ) * SAMPLES_PER_FRAME + PAUSE_SAMPLES
    assert one.size == frames(runner, "One two three.") * SAMPLES_PER_FRAME
    assert two.size == expected
    silent = np.flatnonzero(two[one.size : one.size + PAUSE_SAMPLES])
    assert silent.size == 0  # the pause sits right after the first sentence


def test_speed_changes_duration(tts_server, runner):
    normal, _ = decode(speak(tts_server, input="Speak this slowly.", response_format="wav").content)
    fast, _ = decode(speak(tts_server, input="Speak this slowly.", response_format="wav", speed=2.0).content)
    slow, _ = decode(speak(tts_server, input="Speak this slowly.", response_format="wav", speed=0.5).content)
    base = frames(runner, "Speak this slowly.")
    assert normal.size == base * SAMPLES_PER_FRAME
    assert fast.size == round(base / 2) * SAMPLES_PER_FRAME
    assert slow.size == base * 2 * SAMPLES_PER_FRAME


def test_same_seed_gives_the_same_bytes_and_no_seed_varies(tts_server):
    text = "Dropout stays on at inference. A seed pins it."
    first = speak(tts_server, input=text, response_format="wav", seed=42).content
    again = speak(tts_server, input=text, response_format="wav", seed=42).content
    other = speak(tts_server, input=text, response_format="wav", seed=43).content
    unseeded = [speak(tts_server, input=text, response_format="wav").content for _ in range(2)]
    assert first == again
    assert first != other
    assert unseeded[0] != unseeded[1]


def test_seeded_audio_does_not_depend_on_concurrent_requests(tts_server):
    text = "Reproducible under load. Whatever else runs."
    alone = speak(tts_server, input=text, response_format="wav", seed=7).content
    with ThreadPoolExecutor(6) as pool:
        noise = [pool.submit(speak, tts_server, input=f"Other request {i}. Still busy.") for i in range(5)]
        seeded = pool.submit(speak, tts_server, input=text, response_format="wav", seed=7)
        assert all(f.result().status_code == 200 for f in noise)
        assert seeded.result().content == alone


def test_voices_are_listed_and_change_the_voice(tts_server, models_dir):
    listing = httpx.get(f"{tts_server.rest_url}/v1/voices").json()
    installed = [v["id"] for v in listing["data"] if "alias_of" not in v]
    assert installed == ["alloy", "echo", "nova", "shimmer"]
    assert [v["id"] for v in listing["data"] if v["default"]] == ["alloy"]
    aliases = {v["id"]: v["alias_of"] for v in listing["data"] if "alias_of" in v}
    assert set(installed) | set(aliases) == set(OPENAI_VOICES)
    echo = speak(tts_server, voice="echo", response_format="wav", seed=5).content
    assert echo != speak(tts_server, voice="nova", response_format="wav", seed=5).content
    # OpenAI's object form of a voice, and the same x-vector sent as the request's own embedding.
    assert speak(tts_server, voice={"id": "echo"}, response_format="wav", seed=5).content == echo
    vector = np.load(models_dir / "tts" / "voices" / "echo.npy").tolist()
    assert speak(tts_server, speaker_embedding=vector, response_format="wav", seed=5).content == echo


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"input": "x" * 4097}, "input", "4097 characters exceeds the limit of 4096"),
        ({"input": "   "}, "input", "must not be empty"),
        ({"input": "🙂 … 🙂"}, "input", "nothing to pronounce"),
        ({"voice": "bob"}, "voice", "unknown voice 'bob'; available: alloy, echo, nova, shimmer, or an alias"),
        ({"response_format": "wma"}, "response_format", "unsupported format 'wma'"),
        ({"speed": 4.5}, "speed", "less than or equal to 4"),
        ({"speed": 0.1}, "speed", "greater than or equal to 0.25"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"speaker_embedding": [0.1] * 3}, "speaker_embedding", "expected 512 values, got 3"),
        ({"speaker_embedding": [0.0] * 512}, "speaker_embedding", "must not be all zeros"),
        ({"model": "whisper-1"}, "model", "unknown model 'whisper-1'"),
        ({"stream": True, "response_format": "mp3"}, "response_format", "streaming sends wav or pcm"),
        ({"stream_format": "json"}, "stream_format", "'audio' or 'sse'"),
        ({"instructions": "x" * 4097}, "instructions", "4097 characters exceeds the limit of 4096"),
        ({"emotion": "cheerful"}, "emotion", "Extra inputs are not permitted"),
    ],
)
def test_bad_requests_get_400_naming_the_field(tts_server, body, param, message):
    response = speak(tts_server, **body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"]


def test_openai_sdk_creates_speech(client, tts_server):
    response = client.audio.speech.create(
        model="tts-1", voice="nova", input="Hi from the SDK.", response_format="wav"
    )
    samples, rate = decode(response.content)
    assert rate == 16000 and samples.size > 0
    model_ids = [m.id for m in client.models.list().data]
    assert "speecht5_tts" in model_ids
    with pytest.raises(openai.BadRequestError, match="unknown voice 'voice_1234'"):
        client.audio.speech.create(model="tts-1", voice={"id": "voice_1234"}, input="Hi.")


def test_sdk_streaming_sends_the_first_sentence_before_the_last_is_made(client, runner, patch_synthesize):
    """The last sentence's synthesis blocks until the client has received audio: only a response that
    streams sentence by sentence can get past that (otherwise the gate times out)."""
    text = "First comes alone. Second follows. Third ends it."
    last_sentence = runner.sentences(text)[-1].token_ids
    first_audio_received = threading.Event()
    gate_opened_by_client = []

    def hold_last_sentence(token_ids):
        if tuple(last_sentence) in map(tuple, token_ids):
            gate_opened_by_client.append(first_audio_received.wait(timeout=20))

    patch_synthesize(hold_last_sentence)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=text,
        response_format="pcm",
        extra_body={"stream": True, "seed": 9},
    ) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        chunks = response.iter_bytes()
        first = next(chunks)
        first_audio_received.set()
        streamed = first + b"".join(chunks)
    assert gate_opened_by_client == [True]
    # Streaming changes when bytes arrive, not what they are.
    whole = client.audio.speech.create(
        model="tts-1", voice="alloy", input=text, response_format="pcm", extra_body={"seed": 9, "stream": False}
    )
    assert streamed == whole.content


def test_streamed_wav_is_a_valid_file(tts_server):
    body = {"input": "One. Two two. Three three three.", "stream": True, "response_format": "wav", "seed": 4}
    with httpx.stream("POST", f"{tts_server.rest_url}/v1/audio/speech", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        content = response.read()
    samples, rate = decode(content)
    assert rate == 16000
    body["stream"] = False
    reference, _ = decode(speak(tts_server, **body).content)
    assert np.array_equal(samples, reference)


def test_metrics_report_real_time_factor_and_time_to_first_audio(tts_server):
    speak(tts_server, input="Measure me. Twice.", stream=True, response_format="pcm")
    speak(tts_server, input="Measure me.", response_format="wav", stream=False)
    text = httpx.get(f"{tts_server.rest_url}/metrics").text
    assert 'tts_real_time_factor_count{task="synthesis"}' in text
    assert 'tts_time_to_first_audio_seconds_count{mode="stream",protocol="rest"}' in text
    assert 'tts_time_to_first_audio_seconds_count{mode="whole",protocol="rest"}' in text
