"""Hostile audio against real ASR and TTS servers (REST and gRPC on loopback, in this process).

Each attack must get its own clear 4xx (or gRPC status) quickly, leave the server answering normal requests,
and never raise the process's peak memory by much: before the limits, a 32 KB WAV claiming 5,000,011 Hz took
21 s and 4.4 GB to resample, and the same file made voice conversion answer 500.
"""

import io
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf

from protos import asr_pb2, asr_pb2_grpc, tts_pb2, tts_pb2_grpc
from services.asr.service import create_service as create_asr
from services.kit.testing import ServerThread
from services.tts.service import create_service as create_tts
from tests.audio_files import flac_claiming, wav_header

ASR_MAX_SECONDS = 90
TTS_MAX_SECONDS = 5
STREAM_BODY_BYTES = 4 * 1024 * 1024
STREAM_MESSAGES = 1000
STALL_SECONDS = 2.0
MEMORY_BUDGET_MB = 300


# Files whose headers say whatever the attack needs.


def silence(fmt: str, seconds: int, rate: int, channels: int = 1) -> bytes:
    """Digital silence compresses to almost nothing: the decoded length is the attack."""
    buffer = io.BytesIO()
    block = np.zeros((rate * 10, channels), dtype=np.int16)
    with sf.SoundFile(buffer, "w", rate, channels, format=fmt) as out:
        for _ in range(seconds // 10):
            out.write(block)
    return buffer.getvalue()


def speech(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2, rate, format="WAV")
    return buffer.getvalue()


RANGE = "8000-192000 Hz"
ATTACKS = {
    "rate 5,000,011 Hz": (lambda: wav_header(5_000_011), 400, ["5000011 Hz", RANGE]),
    "rate 655,347 Hz": (lambda: wav_header(655_347), 400, ["655347 Hz", RANGE]),
    "rate 1 Hz": (lambda: wav_header(1), 400, ["rate of 1 Hz", RANGE]),
    "1000 channels": (lambda: wav_header(16000, channels=1000, frames=16), 400, ["1000 channels", "at most 8"]),
    "header claiming billions of frames": (
        lambda: flac_claiming(silence("FLAC", 10, 16000), (1 << 36) - 1),
        413,
        ["4294967.3 s long", "the limit is"],
    ),
    # 600 s of 48 kHz stereo in ~110 KB, its length left unknown in the header: only counting helps.
    "FLAC bomb of unknown length": (
        lambda: flac_claiming(silence("FLAC", 600, 48000, channels=2), 0),
        413,
        ["more than", "the limit is"],
    ),
    "OGG bomb": (lambda: silence("OGG", 200, 8000), 413, ["200.0 s long", "the limit is"]),
    "truncated header": (lambda: wav_header(16000)[:30], 415, ["could not decode", "readable formats"]),
    "rate 0 Hz": (lambda: wav_header(0), 415, ["could not decode"]),
    "FLAC magic then garbage": (lambda: b"fLaC" + bytes(range(256)) * 4, 415, ["could not decode"]),
}


# Peak memory of this process, where the servers run as threads.


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} missing from /proc/self/status")


def peak_growth_mb(send):
    """Runs `send()`; returns its result and how far the process's peak resident memory rose, in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current resident size
    except OSError:
        pass  # then the peak so far is the baseline: a weaker but still valid bound
    before = _status_kib("VmHWM")
    result = send()
    return result, (_status_kib("VmHWM") - before) / 1024


# Servers.


@pytest.fixture(scope="module")
def asr_server(make_asr_settings):
    settings = make_asr_settings(
        max_new_tokens=8,
        max_audio_seconds=ASR_MAX_SECONDS,
        max_body_bytes=STREAM_BODY_BYTES,
        max_stream_messages=STREAM_MESSAGES,
        body_timeout_s=STALL_SECONDS,
    )
    with ServerThread(lambda: [create_asr(settings)], settings) as server:
        yield server


@pytest.fixture(scope="module")
def tts_server(make_tts_settings):
    settings = make_tts_settings(max_conversion_seconds=TTS_MAX_SECONDS)
    with ServerThread(lambda: [create_tts(settings)], settings) as server:
        yield server


@pytest.fixture(scope="module")
def asr_stub(asr_server):
    with grpc.insecure_channel(asr_server.grpc_target) as channel:
        yield asr_pb2_grpc.SpeechRecognitionStub(channel)


@pytest.fixture(scope="module")
def tts_stub(tts_server):
    with grpc.insecure_channel(tts_server.grpc_target) as channel:
        yield tts_pb2_grpc.TextToSpeechStub(channel)


def post(server, path: str, data: bytes, **form) -> httpx.Response:
    return httpx.post(server.rest_url + path, files={"file": ("attack.wav", data)}, data=form, timeout=60)


def assert_asr_still_serves(server):
    response = post(server, "/v1/audio/transcriptions", speech(1.0))
    assert response.status_code == 200 and isinstance(response.json()["text"], str)


def assert_tts_still_serves(server):
    response = post(server, "/v1/audio/conversions", speech(0.5), voice="nova")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"


def assert_refused(response: httpx.Response, status: int, fragments: list[str]):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == "file"
    for fragment in fragments:
        assert fragment in error["message"]


# REST: ASR transcriptions and translations, TTS voice conversion.


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_asr_rest_refuses_hostile_audio(asr_server, path, attack):
    make, status, fragments = ATTACKS[attack]
    data = make()
    response, growth = peak_growth_mb(lambda: post(asr_server, path, data))
    assert_refused(response, status, fragments)
    assert growth < MEMORY_BUDGET_MB
    assert_asr_still_serves(asr_server)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_voice_conversion_refuses_hostile_audio(tts_server, attack):
    make, status, fragments = ATTACKS[attack]
    data = make()
    response, growth = peak_growth_mb(lambda: post(tts_server, "/v1/audio/conversions", data, voice="nova"))
    assert_refused(response, status, fragments)
    assert growth < MEMORY_BUDGET_MB
    assert_tts_still_serves(tts_server)


def test_voice_conversion_refuses_audio_too_short_for_the_model(tts_server):
    # 100 samples at 8 kHz are 200 at 16 kHz: fewer than the speech encoder needs for one frame.
    buffer = io.BytesIO()
    sf.write(buffer, np.full(100, 0.1, dtype=np.float32), 8000, format="WAV")
    response = post(tts_server, "/v1/audio/conversions", buffer.getvalue(), voice="nova")
    assert_refused(response, 400, ["too short to convert", "200 samples at 16000 Hz", "at least 400"])
    assert_tts_still_serves(tts_server)


# gRPC: unary calls and the TranscribeStream client stream.


def test_grpc_transcribe_refuses_a_5_mhz_header(asr_server, asr_stub):
    request = asr_pb2.TranscribeRequest(audio=wav_header(5_000_011), filename="odd.wav")
    error, growth = peak_growth_mb(lambda: pytest.raises(grpc.RpcError, asr_stub.Transcribe, request, timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'odd.wav' has a sample rate of 5000011 Hz" in error.value.details()
    assert growth < MEMORY_BUDGET_MB
    assert_asr_still_serves(asr_server)


def test_grpc_convert_refuses_a_655_khz_header(tts_server, tts_stub):
    request = tts_pb2.ConvertRequest(audio=wav_header(655_347), voice="nova")
    error, growth = peak_growth_mb(lambda: pytest.raises(grpc.RpcError, tts_stub.Convert, request, timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "655347 Hz" in error.value.details() and RANGE in error.value.details()
    assert growth < MEMORY_BUDGET_MB
    assert_tts_still_serves(tts_server)


def config_message(pcm_sample_rate: int = 0) -> asr_pb2.TranscribeStreamRequest:
    return asr_pb2.TranscribeStreamRequest(config=asr_pb2.StreamConfig(pcm_sample_rate=pcm_sample_rate))


def endless(first: asr_pb2.TranscribeStreamRequest, then: asr_pb2.TranscribeStreamRequest):
    yield first
    while True:
        yield then


CLIENT_DEADLINE_S = 30


def stream_error(stub, messages) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        stub.TranscribeStream(messages, timeout=CLIENT_DEADLINE_S)
    return error.value


@pytest.mark.parametrize(
    ("pcm_rate", "then", "limit"),
    [
        # File chunks: the body limit.
        (0, asr_pb2.TranscribeStreamRequest(audio=bytes(64 * 1024)), f"the {STREAM_BODY_BYTES} byte limit"),
        # Microphone PCM: the duration limit, reached before the body limit.
        (16000, asr_pb2.TranscribeStreamRequest(audio=bytes(64 * 1024)), f"the limit is {ASR_MAX_SECONDS} s"),
        # Empty messages carry no bytes, but each one still costs the server.
        (0, asr_pb2.TranscribeStreamRequest(audio=b""), f"the {STREAM_MESSAGES} message limit"),
    ],
    ids=["file-chunks", "pcm", "empty-messages"],
)
def test_never_ending_stream_is_cut_off(asr_server, asr_stub, pcm_rate, then, limit):
    started = time.monotonic()
    error, growth = peak_growth_mb(lambda: stream_error(asr_stub, endless(config_message(pcm_rate), then)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and limit in error.details()
    assert time.monotonic() - started < CLIENT_DEADLINE_S / 2  # cut off by the server, not the client's deadline
    assert growth < MEMORY_BUDGET_MB
    assert_asr_still_serves(asr_server)


def test_stream_at_a_hostile_pcm_rate_is_refused_before_any_audio(asr_server, asr_stub):
    error = stream_error(asr_stub, endless(config_message(5_000_011), asr_pb2.TranscribeStreamRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw PCM has a sample rate of 5000011 Hz" in error.details() and RANGE in error.details()
    assert_asr_still_serves(asr_server)


def test_stalled_stream_is_cut_off(asr_server, asr_stub):
    release = threading.Event()

    def stalled():
        yield config_message()
        release.wait(30)

    started = time.monotonic()
    try:
        error = stream_error(asr_stub, stalled())
    finally:
        release.set()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"sent nothing for {STALL_SECONDS:g} s" in error.details()
    assert time.monotonic() - started < STALL_SECONDS + 5
    assert_asr_still_serves(asr_server)
