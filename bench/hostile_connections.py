"""Slow and idle clients: half-sent REST requests and never-ending gRPC health Watch streams, then the probes
and a real request. Before: 503 on every REST route and RESOURCE_EXHAUSTED on every RPC while they stay open."""

import resource
import socket
import time
from collections.abc import Callable

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hostile_platform import Platform

from protos import translation_pb2, translation_pb2_grpc

HALF_SENT_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
TRANSLATE = {"text": ["Hello world."], "source_lang": "en", "target_lang": "de", "max_new_tokens": 8}
# Watch streams per connection: under the server's per-connection stream limit, so none waits client-side.
WATCHES_PER_CHANNEL = 50


def room_for(sockets: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < sockets + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def answers(platform: Platform, cap: float) -> list[str]:
    """/healthz, /readyz and a translation, each as `path status`."""
    results = []
    for method, path, body in (("GET", "/healthz", None), ("GET", "/readyz", None), ("POST", "/v1/translate", TRANSLATE)):
        try:
            status = str(httpx.request(method, platform.rest_url + path, json=body, timeout=cap).status_code)
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.TransportError as exc:
            status = type(exc).__name__
        results.append(f"{path} {status}")
    return results


def half_sent_connections(count: int) -> Callable[[Platform, float], tuple[str, str, float]]:
    def attack(platform: Platform, cap: float) -> tuple[str, str, float]:
        room_for(count)
        host, port = platform.rest_url.removeprefix("http://").split(":")
        attackers = []
        try:
            for _ in range(count):
                sock = socket.create_connection((host, int(port)), timeout=cap)
                sock.sendall(HALF_SENT_HEAD)
                attackers.append(sock)
            started = time.perf_counter()
            results = answers(platform, cap)
            seconds = time.perf_counter() - started
        finally:
            for sock in attackers:
                sock.close()
        statuses = sorted({result.split()[-1] for result in results})
        return "/".join(statuses), f"{count} connections open; " + ", ".join(results), seconds

    return attack


def health_watches(count: int) -> Callable[[Platform, float], tuple[str, str, float]]:
    def attack(platform: Platform, cap: float) -> tuple[str, str, float]:
        channels = [grpc.insecure_channel(platform.grpc_target) for _ in range(-(-count // WATCHES_PER_CHANNEL))]
        streams, opened, refused = [], 0, 0
        try:
            for index in range(count):
                stub = health_pb2_grpc.HealthStub(channels[index // WATCHES_PER_CHANNEL])
                stream = stub.Watch(health_pb2.HealthCheckRequest(), timeout=cap)
                streams.append(stream)
                try:
                    next(stream)
                    opened += 1
                except grpc.RpcError:
                    refused += 1
            started = time.perf_counter()
            with grpc.insecure_channel(platform.grpc_target) as channel:
                results = []
                try:
                    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=cap)
                    results.append(f"Check {health_pb2.HealthCheckResponse.ServingStatus.Name(check.status)}")
                except grpc.RpcError as error:
                    results.append(f"Check {error.code().name}")
                try:
                    translation_pb2_grpc.TranslationStub(channel).Translate(
                        translation_pb2.TranslateRequest(**TRANSLATE), timeout=cap)
                    results.append("Translate OK")
                except grpc.RpcError as error:
                    results.append(f"Translate {error.code().name}")
            seconds = time.perf_counter() - started
        finally:
            for stream in streams:
                stream.cancel()
            for channel in channels:
                channel.close()
        answer = "/".join(result.split()[-1] for result in results)
        return answer, f"{opened} Watch streams open, {refused} refused; " + ", ".join(results), seconds

    return attack


ATTACKS = [
    ("168 half-sent REST connections, then /healthz, /readyz, /v1/translate", half_sent_connections(168)),
    ("1,000 slowloris connections (half-sent heads), then /healthz, /readyz, /v1/translate", half_sent_connections(1000)),
    ("132 gRPC Health/Watch streams (no metadata), then Health/Check + Translate", health_watches(132)),
]
