"""The ASR client (REST sync and async, gRPC unary and client-streaming) on the tiny Whisper pair."""

import io
import json

import numpy as np
import pytest
import soundfile as sf

from clients import AsyncClient
from clients.asr import file_chunks
from clients.cli import main
from clients.errors import InvalidRequestError
from loadtests.payloads import speech_like_audio
from services.asr.service import create_service
from services.kit.testing import ServerThread


def wav(seconds: float, seed: int, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, speech_like_audio(seconds, rate, np.random.default_rng(seed)), rate, format="WAV")
    return buffer.getvalue()


AUDIO = wav(1.5, 1)


@pytest.fixture(scope="module")
def server(make_asr_settings):
    settings = make_asr_settings(max_new_tokens=20, max_audio_seconds=30)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def test_transcribe_over_rest_and_grpc_agree(rest, grpc_client):
    via_rest = rest.asr.transcribe(AUDIO, language="en")
    via_grpc = grpc_client.asr.transcribe(AUDIO, language="en")
    assert via_rest.text == via_grpc.text and via_rest.decoding in ("assisted", "plain")
    assert via_grpc.language == "en" and via_grpc.duration == pytest.approx(1.5, abs=0.01)
    forced = rest.asr.transcribe(AUDIO, language="en", decoding="plain")
    assert forced.decoding == "plain" and forced.text == via_rest.text  # the paths give identical text


def test_timestamps_segments_and_subtitles(rest, grpc_client):
    result = rest.asr.transcribe(AUDIO, language="en", timestamps=True)
    assert result.segments and result.duration == pytest.approx(1.5, abs=0.01)
    assert all(0 <= s.start <= s.end for s in result.segments)
    for fmt in ("srt", "vtt"):
        from_server = rest.asr.transcribe_as(AUDIO, fmt, language="en")
        assert from_server == result.subtitles(fmt)  # the client formats gRPC segments the same way
    assert grpc_client.asr.transcribe(AUDIO, language="en", timestamps=True).segments == result.segments


def test_translate_task(rest, grpc_client):
    assert (
        rest.asr.translate(AUDIO, language="de").text == grpc_client.asr.translate(AUDIO, language="de").text
    )


def test_client_stream_of_file_pieces_and_of_raw_pcm(rest, grpc_client):
    expected = rest.asr.transcribe(AUDIO, language="en").text
    sent = []
    streamed = grpc_client.asr.transcribe_stream(
        file_chunks(AUDIO, 4096), filename="a.wav", language="en", on_chunk=sent.append
    )
    assert streamed.text == expected and b"".join(sent) == AUDIO
    samples, rate = sf.read(io.BytesIO(AUDIO), dtype="int16")
    microphone = (samples[i : i + 1600].tobytes() for i in range(0, len(samples), 1600))  # one-shot iterator
    live = grpc_client.asr.transcribe_stream(microphone, pcm_sample_rate=rate, language="en")
    assert live.text == expected and live.duration == pytest.approx(1.5, abs=0.01)


def test_bad_audio_and_options_are_refused_with_the_servers_message(rest, grpc_client):
    with pytest.raises(InvalidRequestError) as caught:
        rest.asr.transcribe(b"definitely not audio")
    assert caught.value.status == 415 and "could not decode audio" in caught.value.message
    with pytest.raises(InvalidRequestError, match="could not decode audio"):
        grpc_client.asr.transcribe(b"definitely not audio")
    with pytest.raises(InvalidRequestError) as caught:
        rest.asr.transcribe(AUDIO, decoding="sideways")
    assert caught.value.param == "decoding"


async def test_async_transcribe(server, rest):
    async with AsyncClient(server.rest_url, timeout=120) as client:
        result = await client.asr.transcribe(AUDIO, language="en")
    assert result.text == rest.asr.transcribe(AUDIO, language="en").text


def test_cli_transcribes_to_text_json_and_subtitle_files(server, rest, tmp_path, capsys):
    path = tmp_path / "speech.wav"
    path.write_bytes(AUDIO)
    text = rest.asr.transcribe(AUDIO, language="en").text
    expected = rest.asr.transcribe(AUDIO, language="en", timestamps=True)  # decodes with timestamp tokens
    base = ["--url", server.rest_url, "--grpc", server.grpc_target]
    for protocol in ("rest", "grpc"):
        assert main([*base, "--protocol", protocol, "transcribe", str(path), "--language", "en"]) == 0
        assert capsys.readouterr().out.strip() == text.strip()
        srt = tmp_path / f"{protocol}.srt"
        args = [*base, "--protocol", protocol, "transcribe", str(path), "--language", "en", "--format", "srt"]
        assert main([*args, "-o", str(srt)]) == 0
        assert srt.read_text() == expected.subtitles("srt")
        capsys.readouterr()
    assert main([*base, "transcribe", str(path), "--language", "en", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == text
