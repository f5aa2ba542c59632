"""Dynamic batching through the server: compatible concurrent requests share one pipeline call, and
each still gets the images it would get alone."""

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

from protos import imagegen_pb2 as pb
from protos import imagegen_pb2_grpc as pb_grpc
from services.imagegen.service import create_service
from services.kit.testing import ServerThread

STEPS = 5


@pytest.fixture(scope="module")
def server(make_settings):
    # A wide batching window so that requests sent together reliably meet in the queue.
    settings = make_settings(max_wait_ms=1500, max_batch_size=4, wait_when_idle=True)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def concurrently(*calls):
    """Run the calls at the same moment from separate threads; their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def rest(server, **body):
    fields = {"size": "64x64", "steps": STEPS, "scheduler": "euler", **body}
    return lambda: httpx.post(server.rest_url + "/v1/images/generations", json=fields, timeout=60).json()


def alone(reference, prompt, seed, negative_prompt=None, guidance_scale=7.5):
    pipe = StableDiffusionPipeline.from_pipe(
        reference, scheduler=EulerDiscreteScheduler.from_config(reference.scheduler.config)
    )
    return np.asarray(
        pipe(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=STEPS,
            guidance_scale=guidance_scale,
            width=64,
            height=64,
            generator=torch.Generator().manual_seed(seed),
        ).images[0],
        dtype=np.int16,
    )


def test_concurrent_requests_share_one_pipeline_call(server, reference, pixels, steps_executed):
    before = steps_executed(server.rest_url)

    def grpc_call():
        with grpc.insecure_channel(server.grpc_target) as channel:
            request = pb.GenerateRequest(
                prompt="a bridge", seed=30, width=64, height=64, steps=STEPS, scheduler="euler"
            )
            return pb_grpc.ImageGenerationStub(channel).Generate(request, timeout=60)

    first, second, third = concurrently(
        rest(server, prompt="a castle", seed=10),
        rest(server, prompt="a harbour", seed=20, n=2, negative_prompt="people"),
        grpc_call,
    )
    # Four images from three requests (two of them REST, one gRPC), STEPS denoising steps in total.
    assert steps_executed(server.rest_url) - before == STEPS
    served = [
        (pixels(first["data"][0]["b64_json"]), alone(reference, "a castle", 10)),
        (pixels(second["data"][0]["b64_json"]), alone(reference, "a harbour", 20, "people")),
        (pixels(second["data"][1]["b64_json"]), alone(reference, "a harbour", 21, "people")),
        (pixels(third.images[0].data), alone(reference, "a bridge", 30)),
    ]
    for batched, solo in served:
        difference = np.abs(batched - solo)  # batched kernels round differently: at most one level, rarely
        assert difference.max() <= 1 and (difference > 0).mean() < 0.02


def test_requests_with_different_guidance_run_separately(server, reference, pixels, steps_executed):
    before = steps_executed(server.rest_url)
    low, high = concurrently(
        rest(server, prompt="a castle", seed=10, guidance_scale=3.0),
        rest(server, prompt="a castle", seed=10, guidance_scale=9.0),
    )
    assert steps_executed(server.rest_url) - before == 2 * STEPS
    assert np.array_equal(
        pixels(low["data"][0]["b64_json"]), alone(reference, "a castle", 10, guidance_scale=3.0)
    )
    assert np.array_equal(
        pixels(high["data"][0]["b64_json"]), alone(reference, "a castle", 10, guidance_scale=9.0)
    )
