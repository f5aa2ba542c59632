"""tts.v1.TextToSpeech over gRPC: unary, server streaming, voices and errors."""

import io
import threading

import grpc
import numpy as np
import pytest
import soundfile as sf

from protos import tts_pb2 as pb
from protos import tts_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def stub(tts_server):
    with grpc.insecure_channel(tts_server.grpc_target) as channel:
        yield pb_grpc.TextToSpeechStub(channel)


def test_synthesize_returns_a_decodable_file(stub):
    response = stub.Synthesize(
        pb.SynthesizeRequest(input="Hello over gRPC.", voice="echo", response_format="flac")
    )
    samples, rate = sf.read(io.BytesIO(response.audio))
    assert response.media_type == "audio/flac" and response.sample_rate == rate == 16000
    assert response.duration_seconds == pytest.approx(samples.size / 16000, abs=1e-3)


def test_stream_chunks_form_the_same_file_as_the_unary_call(stub):
    request = pb.SynthesizeRequest(input="One. Two two. Three three three.", response_format="wav", seed=3)
    chunks = list(stub.SynthesizeStream(request, timeout=60))
    assert [c.sentence_index for c in chunks] == [0, 1, 2]
    assert [c.text for c in chunks] == ["One.", "Two two.", "Three three three."]
    assert {c.media_type for c in chunks} == {"audio/wav"}
    streamed, _ = sf.read(io.BytesIO(b"".join(c.audio for c in chunks)), dtype="int16")
    whole, _ = sf.read(io.BytesIO(stub.Synthesize(request).audio), dtype="int16")
    assert np.array_equal(streamed, whole)
    assert sum(c.duration_seconds for c in chunks) == pytest.approx(whole.size / 16000, abs=1e-3)


def test_first_chunk_arrives_while_the_last_sentence_is_still_being_made(stub, runner, patch_synthesize):
    text = "Early bird. Middle one. Late arrival."
    last_sentence = tuple(runner.sentences(text)[-1].token_ids)
    first_chunk_received = threading.Event()
    released_by_client = []

    def hold_last_sentence(token_ids):
        if last_sentence in map(tuple, token_ids):
            released_by_client.append(first_chunk_received.wait(timeout=20))

    patch_synthesize(hold_last_sentence)
    stream = stub.SynthesizeStream(pb.SynthesizeRequest(input=text, response_format="pcm"), timeout=60)
    first = next(stream)
    first_chunk_received.set()
    rest = list(stream)
    assert first.sentence_index == 0 and len(rest) == 2
    assert released_by_client == [True]


def test_list_voices(stub):
    response = stub.ListVoices(pb.ListVoicesRequest())
    assert list(response.voices) == ["alloy", "echo", "nova", "shimmer"]
    assert response.default_voice == "alloy"
    # OpenAI's other voice names, spread over the installed voices in name order.
    assert dict(response.aliases) == {
        "ash": "alloy", "ballad": "echo", "coral": "nova", "fable": "shimmer", "onyx": "alloy",
        "sage": "echo", "verse": "nova", "marin": "shimmer", "cedar": "alloy",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"input": "Hi.", "voice": "bob"}, "unknown voice 'bob'"),
        ({"input": ""}, "input: must not be empty"),
        ({"input": "x" * 5000}, "exceeds the limit of 4096"),
        ({"input": "Hi.", "speed": 5.0}, "speed"),
        ({"input": "Hi.", "speaker_embedding": [1.0, 2.0]}, "expected 512 values"),
    ],
)
def test_bad_requests_get_invalid_argument(stub, request_fields, message):
    with pytest.raises(grpc.RpcError) as error:
        stub.Synthesize(pb.SynthesizeRequest(**request_fields))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


def test_streaming_refuses_formats_it_cannot_stream(stub):
    with pytest.raises(grpc.RpcError) as error:
        list(stub.SynthesizeStream(pb.SynthesizeRequest(input="Hi.", response_format="mp3")))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "streaming sends wav or pcm" in error.value.details()


def test_long_streams_arrive_in_order_and_match_the_unary_audio(stub):
    # More sentences than one generate call takes (16): the stream spans several calls.
    text = " ".join(f"Sentence number {i}." for i in range(20))
    request = pb.SynthesizeRequest(input=text, response_format="pcm", seed=12)
    chunks = list(stub.SynthesizeStream(request, timeout=120))
    assert [c.sentence_index for c in chunks] == list(range(20))
    assert b"".join(c.audio for c in chunks) == stub.Synthesize(request, timeout=120).audio
