"""loadgen.bench.scheduler_replay at a small size: every request is answered in virtual time, the
cost model is calibrated to the load asked for, the same seeds give the same figures, and the
figures tell the orders apart (arrival order makes small requests wait behind large ones)."""
from __future__ import annotations

import pytest

from engines import EngineConfig, build_reranker
from engines.testmodel import ensure_test_model
from loadgen.bench.scheduler_replay import LARGE, SMALL, Replay, arrivals, measure


@pytest.fixture(scope="module")
def reranker():
    # OpenVINO, as the bench builds it: its shape buckets decide the batches' sizes
    return build_reranker(EngineConfig(engine="openvino", model=str(ensure_test_model()), precision="fp32",
                                       device="cpu", max_batch_tokens=1024, max_backlog_batch_tokens=2048))


def test_every_arrival_is_answered_once_after_it_arrived(reranker):
    timeline = arrivals([SMALL, LARGE], 30.0, seed=1)
    assert {a.stream for a in timeline} == {"small", "large"} and all(a.at < 30.0 for a in timeline)
    assert arrivals([SMALL], 30.0, seed=1) == [a for a in timeline if a.stream == "small"], "alone as together"
    result = Replay(reranker, "aged", token_s=50e-6).run(timeline)
    latencies = result["latencies"]
    assert len(latencies["small"]) + len(latencies["large"]) == len(timeline)
    assert min(min(v) for v in latencies.values()) > 0 and 0 < result["busy"] < 1 and 0 <= result["padding"] < 0.5


def test_the_same_seeds_give_the_same_figures_and_the_orders_differ(reranker):
    aged = measure(reranker, "aged", seeds=1, duration_s=90.0, load=0.5)
    assert abs(aged["seeds"][0]["busy_together"] - 0.5) < 0.2, "the small requests add a little to the large ones' half"
    assert measure(reranker, "aged", seeds=1, duration_s=90.0, load=0.5) == aged
    fifo = measure(reranker, "fifo", seeds=1, duration_s=90.0, load=0.5)
    assert fifo["seeds"][0]["small_ratio"] > 2 * aged["seeds"][0]["small_ratio"]
