"""Shared load generation for the bench scripts: concurrent JSON POSTs and latency percentiles."""

import asyncio
import statistics
import time

import httpx


async def post_load(url: str, bodies: list[dict], concurrency: int, timeout: float = 600) -> tuple[float, list[float]]:
    """POST every body with `concurrency` clients in parallel; (wall seconds, per-request latencies)."""
    latencies: list[float] = []
    queue = list(range(len(bodies)))

    async def user(client: httpx.AsyncClient):
        while queue:
            body = bodies[queue.pop()]
            started = time.perf_counter()
            response = await client.post(url, json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=concurrency)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(user(client) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]
