"""The TTS client (REST sync and async, gRPC; whole and streamed audio, voices, conversion)."""

import io

import numpy as np
import pytest
import soundfile as sf

from clients import AsyncClient
from clients.cli import main
from clients.errors import InvalidRequestError
from clients.tts import save_audio_stream
from loadtests.payloads import audio_file
from services.kit.testing import ServerThread
from services.tts.service import create_service

TEXT = "Hello there. This is the second sentence."


@pytest.fixture(scope="module")
def server(make_tts_settings):
    settings = make_tts_settings()
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def samples(audio: bytes) -> tuple[np.ndarray, int]:
    data, rate = sf.read(io.BytesIO(audio), dtype="int16")
    return data, rate


def test_speech_is_a_decodable_file_and_the_seed_makes_it_reproducible(rest):
    speech = rest.tts.speech(TEXT, response_format="wav", seed=7)
    data, rate = samples(speech.audio)
    assert speech.media_type == "audio/wav" and rate == speech.sample_rate == 16000
    assert speech.duration_s == pytest.approx(len(data) / rate, abs=1e-3)
    assert rest.tts.speech(TEXT, response_format="wav", seed=7).audio == speech.audio


def test_streamed_audio_saves_as_a_proper_wav_with_the_same_samples(rest, tmp_path):
    whole, _ = samples(rest.tts.speech(TEXT, response_format="wav", seed=3).audio)
    seen = []
    speech = save_audio_stream(
        rest.tts.stream_speech(TEXT, response_format="wav", seed=3), tmp_path / "out.wav", seen.append
    )
    saved = (tmp_path / "out.wav").read_bytes()
    assert int.from_bytes(saved[4:8], "little") == len(saved) - 8  # RIFF size filled in, not 0xFFFFFFFF
    streamed, rate = samples(saved)
    assert rate == 16000 and np.array_equal(streamed, whole)
    assert sum(c.duration_s for c in seen) == pytest.approx(len(whole) / rate, abs=1e-3)
    assert speech.duration_s == pytest.approx(len(whole) / rate, abs=1e-3)


def test_grpc_streams_sentence_by_sentence_and_matches_rest(rest, grpc_client, tmp_path):
    chunks = list(grpc_client.tts.stream_speech(TEXT, response_format="wav", seed=5))
    assert [c.sentence_index for c in chunks] == [0, 1]
    assert chunks[0].text.startswith("Hello")
    streamed, _ = samples(save_audio_stream(iter(chunks), tmp_path / "g.wav").audio)
    whole, _ = samples(grpc_client.tts.speech(TEXT, response_format="wav", seed=5).audio)
    assert np.array_equal(streamed, whole)
    assert grpc_client.tts.speech(TEXT, response_format="wav", seed=5).audio == (
        rest.tts.speech(TEXT, response_format="wav", seed=5).audio
    )


def test_voices_and_conversion(rest, grpc_client):
    voices = rest.tts.voices()
    assert voices.names and voices.default in voices.names
    assert grpc_client.tts.voices() == voices
    source, name = audio_file(1.0, np.random.default_rng(0))
    converted = rest.tts.convert(source, voice=voices.names[-1], seed=1)
    data, rate = samples(converted.audio)
    assert rate == 16000 and len(data) > 0
    assert grpc_client.tts.convert(source, voice=voices.names[-1], seed=1).audio == converted.audio


def test_errors_carry_the_servers_message(rest, grpc_client):
    with pytest.raises(InvalidRequestError, match="voice") as caught:
        rest.tts.speech(TEXT, voice="no-such-voice")
    assert caught.value.status == 400
    with pytest.raises(InvalidRequestError, match="streaming sends wav or pcm"):
        list(rest.tts.stream_speech(TEXT, response_format="flac"))
    with pytest.raises(InvalidRequestError, match="voice"):
        list(grpc_client.tts.stream_speech(TEXT, voice="no-such-voice"))


async def test_async_speech_and_stream(server, rest):
    expected = rest.tts.speech(TEXT, response_format="pcm", seed=11).audio
    async with AsyncClient(server.rest_url, timeout=120) as client:
        whole = await client.tts.speech(TEXT, response_format="pcm", seed=11)
        pieces = [
            chunk.audio async for chunk in client.tts.stream_speech(TEXT, response_format="pcm", seed=11)
        ]
    assert whole.audio == expected and b"".join(pieces) == expected


# -- the command line on the same server ----------------------------------------------------------


def test_cli_synthesizes_streamed_and_whole_files(server, rest, tmp_path, capsys):
    expected, _ = samples(rest.tts.speech(TEXT, response_format="wav", seed=9).audio)
    for protocol in ("rest", "grpc"):
        for extra in ([], ["--no-stream"]):
            out = tmp_path / f"{protocol}{len(extra)}.wav"
            args = ["--url", server.rest_url, "--grpc", server.grpc_target, "--protocol", protocol]
            assert main([*args, "synthesize", TEXT, "-o", str(out), "--seed", "9", *extra]) == 0
            assert f"wav audio to {out}" in capsys.readouterr().out
            written, _ = samples(out.read_bytes())
            assert np.array_equal(written, expected), (protocol, extra)
    flac = tmp_path / "speech.flac"
    assert main(["--url", server.rest_url, "synthesize", TEXT, "-o", str(flac)]) == 0
    assert sf.info(str(flac)).format == "FLAC"


def test_cli_voices_and_unknown_voice(server, rest, capsys):
    assert main(["voices", "--url", server.rest_url]) == 0
    listed = capsys.readouterr().out.splitlines()
    voices = rest.tts.voices()
    assert listed == [f"{v} (default)" if v == voices.default else v for v in voices.names]
    code = main(["synthesize", "hi", "-o", "/dev/null", "--voice", "nobody", "--url", server.rest_url])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("modelserve: server error: 400") and "nobody" in err
