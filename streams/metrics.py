"""Prometheus metrics of one worker, served at /metrics."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("rerank_requests_total", "Requests answered, by status.", ["status"], registry=REGISTRY)
ERRORS = Counter("rerank_errors_total", "Error responses, by code.", ["code"], registry=REGISTRY)
DEAD_LETTERS = Counter("rerank_dead_letters_total", "Messages sent to the dead-letter topic.", registry=REGISTRY)
DOCUMENTS = Counter("rerank_documents_total", "Documents in answered requests.", registry=REGISTRY)
PAIRS = Counter("rerank_pairs_scored_total", "Query-document pairs the cross-encoder scored.", registry=REGISTRY)
WINDOWS = Counter("rerank_windows_total", "Windows scored.", registry=REGISTRY)
WINDOW_REQUESTS = Histogram("rerank_window_requests", "Requests per window.",
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY)
WINDOW_FILL = Histogram("rerank_window_fill_ratio", "Pairs in a window / window_max_pairs.",
                        buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 2.0), registry=REGISTRY)
QUEUE_SECONDS = Histogram("rerank_queue_seconds", "Time a request waited for its window.",
                          buckets=_LATENCY_BUCKETS, registry=REGISTRY)
INFERENCE_SECONDS = Histogram("rerank_inference_seconds", "Engine time per window.",
                              buckets=_LATENCY_BUCKETS, registry=REGISTRY)
TOTAL_SECONDS = Histogram("rerank_total_seconds", "Receipt to answer delivered, per request.",
                          buckets=_LATENCY_BUCKETS, registry=REGISTRY)
INFLIGHT_PAIRS = Gauge("rerank_inflight_pairs", "Pairs taken from Kafka and not yet answered.", registry=REGISTRY)
ASSIGNED_PARTITIONS = Gauge("rerank_assigned_partitions", "Request-topic partitions this worker holds.",
                            registry=REGISTRY)


def count_settled(status: str | None, code: str | None) -> None:
    """Counts a delivered message by what it settled: its request's status, its error code."""
    if status is not None:
        REQUESTS.labels(status).inc()
    if code is not None:
        ERRORS.labels(code).inc()


def sample(name: str, **labels: str) -> float:
    """A metric's current value as /metrics shows it (0 before its first sample)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
