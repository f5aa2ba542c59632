"""A streamed transcript that fails: before its first delta the answer is an ordinary error (a status code, no
events); after it, the failure is framed the same way on every transport (an SSE error event, the gRPC status
after the updates sent, an error response on ModelStreamInfer)."""

import json

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from protos import asr_pb2 as pb
from protos import asr_pb2_grpc as pb_grpc
from services.asr.domain import Partial
from services.asr.service import create_service
from services.kit.batcher import Work
from services.kit.testing import ServerThread

INTERNAL = "internal error: RuntimeError"


@pytest.fixture(scope="module")
def server(make_asr_settings):
    settings = make_asr_settings()
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def long_clip(audio_file):
    """Two 30 s windows: a delta each."""
    return audio_file(40, seed=91)


@pytest.fixture
def failing_delta(monkeypatch):
    """A request's decode fails in the model thread when it is about to send its delta number `which` (0 or 1)."""

    def install(which: int):
        sent: dict[Work, int] = {}
        emit = Work.emit

        def failing(work, event):
            if isinstance(event, Partial):
                if sent.get(work, 0) == which:
                    raise RuntimeError("the decoder broke")
                sent[work] = sent.get(work, 0) + 1
            emit(work, event)

        monkeypatch.setattr(Work, "emit", failing)

    return install


def sse(server, clip: bytes) -> httpx.Response:
    files = {"file": ("long.wav", clip, "audio/wav")}
    data = {"stream": "true", "language": "en"}
    return httpx.post(f"{server.rest_url}/v1/audio/transcriptions", data=data, files=files, timeout=120)


def parsed(response: httpx.Response) -> list[tuple[str | None, dict]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines.get("event"), json.loads(lines["data"])))
    return events


def grpc_updates(server, clip: bytes) -> tuple[list, grpc.RpcError]:
    updates = []
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.SpeechRecognitionStub(channel)
        request = pb.TranscribeRequest(audio=clip, options=pb.TranscribeOptions(language="en"))
        with pytest.raises(grpc.RpcError) as raised:
            for update in stub.TranscribeUpdates(request, timeout=120):
                updates.append(update)
    return updates, raised.value


def oip_stream(server, clip: bytes) -> list:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    audio = triton_grpc.InferInput("audio", [1], "BYTES")
    audio.set_data_from_numpy(np.array([clip], dtype=np.object_))
    answers = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        client.async_stream_infer("asr", [audio], parameters={"language": "en"})
    finally:
        client.stop_stream()
    return answers


def test_a_failure_after_the_first_delta_is_framed_on_every_transport(server, long_clip, failing_delta):
    failing_delta(1)
    response = sse(server, long_clip)
    assert response.status_code == 200
    events = parsed(response)
    assert [data["type"] for _, data in events] == ["transcript.text.delta", "error"]
    assert events[0][0] == "transcript.text.delta" and events[0][1]["delta"]
    assert events[1] == (
        "error",
        {"type": "error", "error": {"code": "internal", "message": INTERNAL, "type": "internal"}},
    )

    updates, error = grpc_updates(server, long_clip)
    assert [update.WhichOneof("update") for update in updates] == ["delta"]
    assert error.code() == grpc.StatusCode.INTERNAL and error.details() == INTERNAL

    answers = oip_stream(server, long_clip)
    assert len(answers) == 2 and answers[0][1] is None and answers[0][0].as_numpy("delta") is not None
    assert str(answers[1][1]).endswith(f"INTERNAL: {INTERNAL}")


def test_a_failure_before_the_first_delta_is_an_ordinary_error(server, long_clip, failing_delta):
    failing_delta(0)
    response = sse(server, long_clip)
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["message"] == INTERNAL
    updates, error = grpc_updates(server, long_clip)
    assert updates == [] and error.code() == grpc.StatusCode.INTERNAL
    answers = oip_stream(server, long_clip)
    assert len(answers) == 1 and str(answers[0][1]).endswith(f"INTERNAL: {INTERNAL}")


def test_the_server_transcribes_after_failed_streams(server, long_clip):
    response = sse(server, long_clip)
    assert [data["type"] for _, data in parsed(response)][-1] == "transcript.text.done"
