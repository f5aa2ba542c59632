"""Streamed speech that fails: before its first sentence the answer is an ordinary error (a status code, no audio);
after it, the failure is framed the same way on every transport (an SSE error event, the gRPC status after the
chunks sent, an error response on ModelStreamInfer), and raw audio is cut short rather than ending as if complete."""

import base64
import json

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from protos import tts_pb2 as pb
from protos import tts_pb2_grpc as pb_grpc

TEXT = "First comes alone. Second fails."
INTERNAL = "internal error: RuntimeError"


@pytest.fixture
def failing_sentence(runner, patch_synthesize):
    """Synthesis of the sentence `which` (0 or 1) of TEXT fails in the model thread."""

    def install(which: int):
        ids = tuple(runner.sentences(TEXT)[which].token_ids)

        def fail(token_ids):
            if ids in map(tuple, token_ids):
                raise RuntimeError("the vocoder broke")

        patch_synthesize(fail)

    return install


def sse_events(tts_server, **body) -> httpx.Response:
    body = {"input": TEXT, "response_format": "pcm", "stream": True, "stream_format": "sse", **body}
    return httpx.post(f"{tts_server.rest_url}/v1/audio/speech", json=body, timeout=60)


def parsed(response: httpx.Response) -> list[tuple[str | None, dict]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines.get("event"), json.loads(lines["data"])))
    return events


def oip_stream(tts_server) -> list:
    client = triton_grpc.InferenceServerClient(tts_server.grpc_target)
    text = triton_grpc.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([TEXT.encode()], dtype=np.object_))
    answers = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        client.async_stream_infer("tts", [text], parameters={"response_format": "pcm"})
    finally:
        client.stop_stream()
    return answers


def grpc_chunks(tts_server) -> tuple[list, grpc.RpcError]:
    chunks = []
    with grpc.insecure_channel(tts_server.grpc_target) as channel:
        stub = pb_grpc.TextToSpeechStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            for chunk in stub.SynthesizeStream(
                pb.SynthesizeRequest(input=TEXT, response_format="pcm"), timeout=60
            ):
                chunks.append(chunk)
    return chunks, raised.value


def test_a_failure_after_the_first_sentence_is_framed_on_every_transport(tts_server, failing_sentence):
    failing_sentence(1)
    response = sse_events(tts_server)
    assert response.status_code == 200
    events = parsed(response)
    assert [data["type"] for _, data in events] == ["speech.audio.delta", "error"]
    assert base64.b64decode(events[0][1]["audio"])
    assert events[1] == (
        "error",
        {"type": "error", "error": {"code": "internal", "message": INTERNAL, "type": "internal"}},
    )

    chunks, error = grpc_chunks(tts_server)
    assert [chunk.sentence_index for chunk in chunks] == [0]
    assert error.code() == grpc.StatusCode.INTERNAL and error.details() == INTERNAL

    answers = oip_stream(tts_server)
    assert len(answers) == 2 and answers[0][1] is None
    assert answers[0][0].as_numpy("sentence_index").tolist() == [0]
    assert str(answers[1][1]).endswith(f"INTERNAL: {INTERNAL}")

    # Raw audio has no room for an error: the transfer is cut short.
    body = {"input": TEXT, "response_format": "pcm", "stream": True}
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{tts_server.rest_url}/v1/audio/speech", json=body, timeout=60)


def test_a_failure_before_the_first_sentence_is_an_ordinary_error(tts_server, failing_sentence):
    failing_sentence(0)
    response = sse_events(tts_server)
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["message"] == INTERNAL
    chunks, error = grpc_chunks(tts_server)
    assert chunks == [] and error.code() == grpc.StatusCode.INTERNAL
    answers = oip_stream(tts_server)
    assert len(answers) == 1 and str(answers[0][1]).endswith(f"INTERNAL: {INTERNAL}")  # an error response
