"""Cancellation: a client that leaves (deadline, closed stream, dropped connection) stops the denoising loop.

Each case starts a generation far too long to finish (1000 steps of 256x256), abandons it, and checks on the
server's own step counter that compute stopped long before the end and that the worker then
answers the next request.
"""

import time

import grpc
import httpx
import pytest

from protos import imagegen_pb2 as pb
from protos import imagegen_pb2_grpc as pb_grpc
from services.imagegen.service import create_service
from services.kit.testing import ServerThread

ENDLESS = 1000  # the most a scheduler takes (the model's training timesteps)


@pytest.fixture(scope="module")
def server(make_settings):
    settings = make_settings(max_wait_ms=0, max_steps=5000, max_queue=1)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.ImageGenerationStub(channel)


@pytest.fixture
def compute(server, steps_executed, stub):
    """Steps the server ran between setup and `settled()`, which waits until no more steps happen."""

    class Compute:
        before = steps_executed(server.rest_url)

        def settled(self) -> float:
            last = steps_executed(server.rest_url)
            for _ in range(40):
                time.sleep(0.5)
                now = steps_executed(server.rest_url)
                if now == last:
                    return now - self.before
                last = now
            raise AssertionError("the denoising loop is still running")

    yield Compute()
    # The worker is free again: a short request answers well before an endless one could finish.
    answer = stub.Generate(pb.GenerateRequest(prompt="next", steps=4), timeout=30)
    assert len(answer.images) == 1


def endless(**fields) -> dict:
    return dict(prompt="a very long walk", steps=ENDLESS, scheduler="euler", **fields)


def test_grpc_deadline_stops_compute(stub, compute):
    with pytest.raises(grpc.RpcError) as failure:
        stub.Generate(pb.GenerateRequest(**endless(width=256, height=256)), timeout=1.0)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0 < compute.settled() < ENDLESS / 4


def test_cancelled_grpc_stream_stops_compute(stub, compute):
    call = stub.GenerateStream(pb.GenerateRequest(**endless(width=256, height=256)), timeout=120)
    steps = [next(call).progress.step for _ in range(3)]
    assert steps == [1, 2, 3]
    call.cancel()
    assert 3 <= compute.settled() < ENDLESS / 4


def test_closed_event_stream_stops_compute(server, compute):
    body = {**endless(size="256x256"), "stream": True, "stream_progress": True}
    seen = 0
    with httpx.stream("POST", server.rest_url + "/v1/images/generations", json=body, timeout=120) as response:
        for line in response.iter_lines():
            seen += line.startswith("event: image_generation.progress")
            if seen == 3:
                break  # leaving the block closes the connection
    assert seen == 3
    assert 3 <= compute.settled() < ENDLESS / 4


def test_dropped_rest_request_stops_compute(server, compute):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.rest_url + "/v1/images/generations", json=endless(size="256x256"), timeout=1.0)
    assert 0 < compute.settled() < ENDLESS / 4


def queue_depth(server) -> float:
    text = httpx.get(server.rest_url + "/metrics", timeout=10).text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith('serving_queue_depth{batcher="imagegen.generate"}')
    )
    return float(line.split()[-1])


def test_full_queue_gets_503_and_the_queued_request_still_answers(server, stub, compute):
    running = stub.GenerateStream(pb.GenerateRequest(**endless(width=256, height=256)), timeout=120)
    next(running)  # the worker is busy with it
    queued = stub.Generate.future(pb.GenerateRequest(prompt="queued", steps=4, seed=1), timeout=60)
    deadline = time.monotonic() + 30
    while queue_depth(server) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    for body in ({"prompt": "one more"}, {"prompt": "one more", "stream": True}):
        refused = httpx.post(server.rest_url + "/v1/images/generations", json=body, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["retry-after"]) >= 1
    running.cancel()
    assert [image.seed for image in queued.result().images] == [1]
    compute.settled()
