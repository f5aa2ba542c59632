"""Image generation's work budget: images x pixels x steps is checked before anything is queued."""

import grpc
import httpx
import pytest

from protos import imagegen_pb2 as pb
from protos import imagegen_pb2_grpc as pb_grpc
from services.imagegen.service import create_service
from services.kit.testing import ServerThread


@pytest.fixture(scope="module")
def server(make_settings):
    # 4 images of 128x128 at 8 steps cost 4 x 1/16 x (8 + 4 for the decode) = 3; the budget admits 1.
    settings = make_settings(max_request_cost=1.0, max_batch_cost=2.0)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def test_a_request_over_the_budget_is_refused_on_every_route_and_a_small_one_runs(server):
    costly = {"prompt": "a lighthouse", "n": 4, "size": "128x128", "steps": 8}
    for stream in (False, True):
        refused = httpx.post(server.rest_url + "/v1/images/generations", json={**costly, "stream": stream})
        assert refused.status_code == 400, stream
        assert "IMAGEGEN_MAX_REQUEST_COST" in refused.json()["error"]["message"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.ImageGenerationStub(channel)
        with pytest.raises(grpc.RpcError) as over:
            stub.Generate(pb.GenerateRequest(prompt="a lighthouse", n=4, width=128, height=128, steps=8), timeout=30)
        assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "MAX_REQUEST_COST" in over.value.details()
    fits = httpx.post(server.rest_url + "/v1/images/generations",
                      json={"prompt": "a lighthouse", "n": 1, "size": "64x64", "steps": 4}, timeout=60)
    assert fits.status_code == 200 and len(fits.json()["data"]) == 1
