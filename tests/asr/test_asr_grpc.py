"""gRPC asr.v1.SpeechRecognition: unary Transcribe and client-streaming TranscribeStream, same results as REST."""

import grpc
import httpx
import numpy as np
import pytest

from protos import asr_pb2 as pb
from protos import asr_pb2_grpc as pb_grpc
from services.asr.service import create_service
from services.kit.testing import ServerThread


@pytest.fixture(scope="module")
def server(make_asr_settings):
    settings = make_asr_settings()
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.SpeechRecognitionStub(channel)


def rest_text(server, content: bytes, **data) -> str:
    files = {"file": ("clip.wav", content, "audio/wav")}
    response = httpx.post(server.rest_url + "/v1/audio/transcriptions", data=data, files=files, timeout=120)
    return response.json()["text"]


def chunks(data: bytes, size: int):
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_unary_matches_rest(server, stub, audio_file):
    data = audio_file(3, seed=21)
    reply = stub.Transcribe(
        pb.TranscribeRequest(audio=data, options=pb.TranscribeOptions(language="en")), timeout=60
    )
    assert reply.text == rest_text(server, data, language="en")
    assert (reply.language, reply.task, reply.model, reply.decoding) == (
        "en",
        "transcribe",
        "whisper",
        "assisted",
    )
    assert reply.duration == pytest.approx(3.0)


def test_unary_translate_with_timestamps(stub, audio_file):
    options = pb.TranscribeOptions(task="translate", timestamps=True, decoding="plain")
    reply = stub.Transcribe(pb.TranscribeRequest(audio=audio_file(4, seed=22), options=options), timeout=60)
    assert reply.task == "translate" and reply.decoding == "plain"
    assert reply.segments and all(0 <= s.start <= s.end <= 4.0 for s in reply.segments)


def test_stream_of_file_chunks_matches_unary(stub, audio_file):
    data = audio_file(5, seed=23, fmt="FLAC")
    unary = stub.Transcribe(pb.TranscribeRequest(audio=data), timeout=60)
    messages = [pb.TranscribeStreamRequest(config=pb.StreamConfig(filename="clip.flac"))]
    messages += [pb.TranscribeStreamRequest(audio=part) for part in chunks(data, 4000)]
    streamed = stub.TranscribeStream(iter(messages), timeout=60)
    assert streamed.text == unary.text and streamed.duration == pytest.approx(5.0)


def test_stream_of_raw_pcm_like_a_microphone(stub, audio):
    samples = audio(4, seed=24)
    pcm = (samples * 32767).astype("<i2").tobytes()
    config = pb.StreamConfig(pcm_sample_rate=16000, options=pb.TranscribeOptions(language="de"))
    # 100 ms chunks, as a live capture would send them; one odd-sized chunk to show chunk borders do not matter.
    parts = chunks(pcm[:3201], 3200) + chunks(pcm[3201:], 3200)
    messages = [pb.TranscribeStreamRequest(config=config)] + [
        pb.TranscribeStreamRequest(audio=p) for p in parts
    ]
    reply = stub.TranscribeStream(iter(messages), timeout=60)
    assert reply.duration == pytest.approx(4.0) and reply.language == "de" and reply.text


@pytest.mark.parametrize(
    "request_,words",
    [
        (pb.TranscribeRequest(audio=b""), "empty"),
        (pb.TranscribeRequest(audio=b"not audio" * 30, filename="x.txt"), "x.txt"),
        (pb.TranscribeRequest(audio=b"RIFF", options=pb.TranscribeOptions(task="summarise")), "task"),
        (pb.TranscribeRequest(audio=b"RIFF", options=pb.TranscribeOptions(language="klingon")), "language"),
        (pb.TranscribeRequest(audio=b"RIFF", options=pb.TranscribeOptions(decoding="turbo")), "decoding"),
        (pb.TranscribeRequest(audio=b"RIFF", options=pb.TranscribeOptions(temperature=3)), "temperature"),
    ],
)
def test_bad_requests_are_invalid_argument(stub, request_, words):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Transcribe(request_, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.details()


def test_unknown_model_is_not_found(stub, audio_file):
    options = pb.TranscribeOptions(model="whisper-large-v3")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Transcribe(pb.TranscribeRequest(audio=audio_file(1, seed=1), options=options), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_errors(stub):
    twice = [pb.TranscribeStreamRequest(config=pb.StreamConfig())] * 2
    with pytest.raises(grpc.RpcError) as caught:
        stub.TranscribeStream(iter(twice), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "once" in caught.value.details()
    odd = [
        pb.TranscribeStreamRequest(config=pb.StreamConfig(pcm_sample_rate=16000)),
        pb.TranscribeStreamRequest(audio=b"abc"),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.TranscribeStream(iter(odd), timeout=30)
    assert "16-bit" in caught.value.details()
    too_long = np.zeros(91 * 8000, dtype="<i2").tobytes()
    messages = [pb.TranscribeStreamRequest(config=pb.StreamConfig(pcm_sample_rate=8000))]
    messages += [pb.TranscribeStreamRequest(audio=part) for part in chunks(too_long, 1 << 20)]
    with pytest.raises(grpc.RpcError) as caught:
        stub.TranscribeStream(iter(messages), timeout=30)
    assert "limit is 90 s" in caught.value.details()


def test_server_keeps_serving_after_errors(stub, audio_file):
    reply = stub.Transcribe(pb.TranscribeRequest(audio=audio_file(1, seed=25)), timeout=60)
    assert reply.text
