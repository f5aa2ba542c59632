"""Prometheus metrics that every service exposes on /metrics.

Latency is split the way an operator debugs it: time waiting in the batcher queue versus time in
the model, plus the batch sizes the batcher actually formed.
"""

from prometheus_client import Counter, Gauge, Histogram

# Buckets cover 1 ms .. ~5 min: tiny CPU models answer in milliseconds, diffusion on CPU in minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "serving_requests_total", "Requests answered, by protocol, route and status", ["protocol", "route", "status"]
)
REQUEST_LATENCY = Histogram(
    "serving_request_latency_seconds", "End-to-end request latency", ["protocol", "route"], buckets=LATENCY_BUCKETS
)
INFLIGHT = Gauge("serving_inflight_requests", "Requests being handled now", ["protocol"])

QUEUE_TIME = Histogram(
    "serving_queue_seconds", "Time a request waited before its batch started", ["batcher"], buckets=LATENCY_BUCKETS
)
COMPUTE_TIME = Histogram(
    "serving_compute_seconds", "Model time of the batch a request ran in", ["batcher"], buckets=LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "serving_batch_size", "Requests per model call", ["batcher"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
)
QUEUE_DEPTH = Gauge("serving_queue_depth", "Requests waiting in the batcher queue", ["batcher"])
REJECTED = Counter("serving_rejected_total", "Requests refused or dropped by the batcher", ["batcher", "reason"])
