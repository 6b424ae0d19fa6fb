"""Helpers for tests that run real worker processes against the broker."""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path

from loadgen.client import RerankClient
from loadgen.cluster.workers import WorkerProcess


def unique_topics() -> dict[str, str]:
    """Worker settings naming topics and a group of their own, so test modules never share them."""
    tag = uuid.uuid4().hex[:8]
    return {"RERANK_REQUEST_TOPIC": f"req-{tag}", "RERANK_RESPONSE_TOPIC": f"resp-{tag}",
            "RERANK_DEAD_LETTER_TOPIC": f"dlq-{tag}", "RERANK_REPLY_TO_PREFIX": f"replies-{tag}.",
            "RERANK_GROUP_ID": f"workers-{tag}"}


def client_of(bootstrap: str, topics: dict[str, str]) -> RerankClient:
    """A client of the worker serving ``topics`` (:func:`unique_topics`); use it with ``with``."""
    return RerankClient(bootstrap, topics["RERANK_REQUEST_TOPIC"], [topics["RERANK_RESPONSE_TOPIC"]])


@contextmanager
def running_worker(env: dict[str, str], log_path: Path, name: str = "worker"):
    """A real worker process, ready; on leaving, it must stop cleanly on SIGTERM (exit 0)."""
    proc = WorkerProcess(env, log_path, name).start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
        print(proc.tail(15))
        assert code == 0, f"worker did not exit cleanly on SIGTERM (exit {code})"
