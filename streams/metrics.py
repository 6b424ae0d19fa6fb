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
# The engine's scheduler: what it chose at each step, and what a request waited for.
STEPS = Counter("rerank_scheduler_steps_total", "Steps of the engine's scheduler, by what they ran "
                "(micro_batch, first_stage, job: a whole job of the bi-encoder engine).", ["kind"], registry=REGISTRY)
INFERENCE_SECONDS = Histogram("rerank_inference_seconds", "Engine time per scheduler step, by what it ran.",
                              ["kind"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
MICRO_BATCH_REQUESTS = Histogram("rerank_micro_batch_requests", "Requests with pairs in a micro-batch.",
                                 buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=REGISTRY)
MICRO_BATCH_PAIRS = Histogram("rerank_micro_batch_pairs", "Pairs in a micro-batch.",
                              buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=REGISTRY)
MICRO_BATCH_TOKENS = Counter("rerank_micro_batch_tokens_total", "Tokens run in micro-batches: real, and with "
                             "padding (padded / real - 1 is the padding overhead).", ["kind"], registry=REGISTRY)
ANCHOR_WAIT_SECONDS = Histogram("rerank_scheduler_chosen_wait_seconds", "How long the request a step chose to go "
                                "next had waited since it reached the engine.", buckets=_LATENCY_BUCKETS,
                                registry=REGISTRY)
#: Request sizes (pairs) for rerank_queue_seconds: a chat turn, a page of results, a large set.
SIZE_LABELS = ((15, "1-15"), (63, "16-63"), (255, "64-255"))
QUEUE_SECONDS = Histogram("rerank_queue_seconds", "Time from receipt until the engine began on a request, by its "
                          "size in pairs.", ["size"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
TOTAL_SECONDS = Histogram("rerank_total_seconds", "Receipt to answer delivered, per request.",
                          buckets=_LATENCY_BUCKETS, registry=REGISTRY)
TRANSACTIONS = Counter("rerank_transactions_total", "Transactions committed (RERANK_DELIVERY=exactly_once): "
                       "answers with their requests' offsets.", registry=REGISTRY)
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


def size_label(pairs: int) -> str:
    """The ``size`` label of a request of ``pairs`` pairs."""
    return next((label for bound, label in SIZE_LABELS if pairs <= bound), "256+")


def observe_step(step, seconds: float) -> None:
    """Counts one step of the engine's scheduler (an ``engines.scheduler.StepResult``)."""
    if step.kind == "idle":
        return
    STEPS.labels(step.kind).inc()
    INFERENCE_SECONDS.labels(step.kind).observe(seconds)
    ANCHOR_WAIT_SECONDS.observe(step.anchor_waited_s)
    if step.kind == "micro_batch":
        MICRO_BATCH_REQUESTS.observe(step.requests)
        MICRO_BATCH_PAIRS.observe(step.pairs)
        MICRO_BATCH_TOKENS.labels("real").inc(step.real_tokens)
        MICRO_BATCH_TOKENS.labels("padded").inc(step.padded_tokens)
