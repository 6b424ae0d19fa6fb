"""loadgen.bench.scheduler_speed at a tiny size: every contender scores every round, the budgets it
sets are put back, and the ratios are taken against windows at 2048 tokens."""
from __future__ import annotations

import pytest

from engines import EngineConfig, build_reranker
from engines.corpus import load_passages
from engines.testmodel import ensure_test_model
from loadgen.bench.engine_speed import make_requests
from loadgen.bench.scheduler_speed import BEFORE, measure


@pytest.fixture(scope="module")
def reranker():
    return build_reranker(EngineConfig(engine="onnx", model=str(ensure_test_model()), precision="fp32", device="cpu",
                                       max_batch_tokens=1024, max_backlog_batch_tokens=2048))


def test_every_contender_runs_every_round_and_the_budgets_are_put_back(reranker):
    passages = load_passages()
    rounds = [make_requests(6, seed=1, passages=passages), make_requests(6, seed=2, passages=passages)]
    report = measure(reranker, rounds, make_requests(2, seed=3, passages=passages), reps=2)
    assert list(report) == [BEFORE, "windows, 1024 tokens", "scheduler, 1024 + backlog 2048 tokens",
                            "scheduler, 1024 tokens, no backlog budget"]
    for row in report.values():
        assert len(row["pairs_per_s"]) == 4 and row["best"] >= row["median"] > 0 and 0 <= row["padding"] < 1
    assert report[BEFORE]["best_vs_before"] == 1.0
    runner = reranker.cross_encoder
    assert (runner.max_batch_tokens, runner.max_backlog_batch_tokens) == (1024, 2048)
