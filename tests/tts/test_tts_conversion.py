"""Voice conversion (SpeechT5ForSpeechToSpeech): audio in, the same speech in another voice out."""

import io

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf

from protos import tts_pb2 as pb
from protos import tts_pb2_grpc as pb_grpc


def audio_file(seconds: float, rate: int = 44100, channels: int = 2, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([tone] * channels, axis=1), rate, format=fmt)
    return buffer.getvalue()


def convert(server, data: bytes, filename="speech.wav", **form) -> httpx.Response:
    return httpx.post(
        f"{server.rest_url}/v1/audio/conversions", files={"file": (filename, data)}, data=form, timeout=60
    )


def test_converts_stereo_44k_wav_to_16k_speech_of_about_the_same_length(tts_server):
    response = convert(tts_server, audio_file(1.5), voice="nova")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    samples, rate = sf.read(io.BytesIO(response.content))
    assert rate == 16000 and samples.ndim == 1
    # Encoder frames (50 per second) x ratio 1 x 256 samples per frame: 0.8 s of audio per input second.
    assert samples.size / rate == pytest.approx(1.5 * 0.8, rel=0.05)
    assert np.abs(samples).max() > 0.001


def test_flac_input_mp3_output_and_seeded_reproducibility(tts_server):
    data = audio_file(1.0, rate=22050, channels=1, fmt="FLAC")
    first = convert(tts_server, data, "speech.flac", voice="echo", seed="8", response_format="wav").content
    again = convert(tts_server, data, "speech.flac", voice="echo", seed="8", response_format="wav").content
    assert first == again
    mp3 = convert(tts_server, data, "speech.flac", voice="echo", response_format="mp3")
    assert mp3.headers["content-type"] == "audio/mpeg"
    assert sf.read(io.BytesIO(mp3.content))[0].size > 0


def test_own_speaker_embedding_as_json(tts_server, models_dir):
    vector = np.load(models_dir / "tts" / "voices" / "shimmer.npy").tolist()
    data = audio_file(0.5)
    named = convert(tts_server, data, voice="shimmer", seed="1").content
    own = convert(tts_server, data, speaker_embedding=str(vector), seed="1").content
    assert own == named


@pytest.mark.parametrize(
    ("data", "form", "status", "message"),
    [
        (b"", {}, 400, "is empty"),
        (b"this is not audio at all", {}, 415, "readable formats"),
        (audio_file(6.0, rate=8000, channels=1), {}, 413, "the limit is 5 s"),
        (audio_file(0.5), {"voice": "bob"}, 400, "unknown voice 'bob'"),
        (audio_file(0.5), {"speaker_embedding": "[1, 2"}, 400, "speaker_embedding"),
        (audio_file(0.5), {"response_format": "wma"}, 400, "unsupported format 'wma'"),
    ],
)
def test_bad_uploads_get_clear_errors(tts_server, data, form, status, message):
    response = convert(tts_server, data, **form)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_missing_file_is_a_400(tts_server):
    response = httpx.post(f"{tts_server.rest_url}/v1/audio/conversions", data={"voice": "alloy"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


def test_grpc_convert(tts_server):
    with grpc.insecure_channel(tts_server.grpc_target) as channel:
        stub = pb_grpc.TextToSpeechStub(channel)
        response = stub.Convert(
            pb.ConvertRequest(audio=audio_file(1.0), voice="alloy", response_format="flac")
        )
        samples, rate = sf.read(io.BytesIO(response.audio))
        assert (
            response.media_type == "audio/flac" and rate == response.sample_rate == 16000 and samples.size > 0
        )
        with pytest.raises(grpc.RpcError) as error:
            stub.Convert(pb.ConvertRequest(audio=b"garbage", filename="clip.wav"))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'clip.wav'" in error.value.details()
