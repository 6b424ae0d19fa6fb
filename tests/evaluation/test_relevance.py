"""evaluation.relevance: the metrics against hand-computed values, candidates files, strategies, and one
small end-to-end run through the real engines (untrained test model, no training)."""
from __future__ import annotations

import json
import math

import click
import numpy as np
import pytest

from engines.testmodel import ensure_test_model
from evaluation.relevance import (
    bootstrap_ratio_ci,
    evaluate,
    make_strategies,
    mean_metrics,
    per_query_metrics,
    read_candidates,
    read_scored_candidates,
    write_candidates,
)

# q1: one relevant document, found at rank 2.
# q2: graded relevance (d2 = 2, d3 = 1), found at ranks 1 and 3.
# q3: its relevant document is never retrieved.
# q4: its relevant document is at rank 11 (outside @10, inside @100).
QRELS = {
    "q1": {"d1": 1},
    "q2": {"d2": 2, "d3": 1},
    "q3": {"d9": 1},
    "q4": {"r": 1},
}
RANKINGS = {
    "q1": ["d0", "d1", "d2"],
    "q2": ["d2", "dx", "d3"],
    "q3": ["d1", "d2"],
    "q4": [f"n{i}" for i in range(10)] + ["r"],
}


def test_metrics_equal_hand_computed_values():
    values = per_query_metrics(QRELS, RANKINGS)
    # NDCG@10 with trec_eval's linear gains: DCG = sum(grade / log2(rank + 1)).
    ndcg_q2 = (2 / math.log2(2) + 1 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    expected = {
        "ndcg@10": {"q1": 1 / math.log2(3), "q2": ndcg_q2, "q3": 0.0, "q4": 0.0},
        "mrr@10": {"q1": 0.5, "q2": 1.0, "q3": 0.0, "q4": 0.0},
        "recall@100": {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0},
    }
    for measure, per_query in expected.items():
        for query_id, value in per_query.items():
            assert values[measure][query_id] == pytest.approx(value, abs=1e-6), (measure, query_id)
    means = mean_metrics(values)
    assert means["ndcg@10"] == pytest.approx((1 / math.log2(3) + ndcg_q2) / 4, abs=1e-6)
    assert means["mrr@10"] == pytest.approx(1.5 / 4)
    assert means["recall@100"] == pytest.approx(3 / 4)


def test_metrics_follow_the_ranking_not_the_document_ids():
    # trec_eval breaks score ties by document id; the ranking given must win regardless.
    assert per_query_metrics({"q": {"a": 1}}, {"q": ["b", "a"]})["mrr@10"]["q"] == pytest.approx(0.5)
    assert per_query_metrics({"q": {"b": 1}}, {"q": ["b", "a"]})["mrr@10"]["q"] == pytest.approx(1.0)


def test_recall_at_100_stops_at_rank_100():
    ranking = [f"n{i}" for i in range(100)] + ["r"]
    assert per_query_metrics({"q": {"r": 1}}, {"q": ranking})["recall@100"]["q"] == 0.0
    assert per_query_metrics({"q": {"r": 1}}, {"q": ranking[1:]})["recall@100"]["q"] == 1.0


def test_empty_ranking_scores_zero():
    values = per_query_metrics({"q": {"a": 1}}, {"q": []})
    assert values["ndcg@10"]["q"] == values["mrr@10"]["q"] == values["recall@100"]["q"] == 0.0


def test_bootstrap_interval():
    same = np.array([0.2, 0.5, 1.0, 0.0])
    assert bootstrap_ratio_ci(same, same) == pytest.approx((1.0, 1.0))
    low, high = bootstrap_ratio_ci(same * 0.9, same)
    assert low == pytest.approx(0.9) and high == pytest.approx(0.9)
    rng = np.random.default_rng(1)
    noisy = rng.random(200)
    low, high = bootstrap_ratio_ci(noisy * rng.uniform(0.8, 1.0, 200), noisy)
    assert 0.8 < low < high < 1.0


def test_candidates_file_round_trip(tmp_path):
    path = tmp_path / "run.trec"
    write_candidates(path, {"q1": ["a", "b", "c"], "q2": ["z"]}, "test")
    assert read_candidates(path, ["q1", "q2"], depth=2) == {"q1": ["a", "b"], "q2": ["z"]}
    assert read_candidates(path, ["q2"], depth=5) == {"q2": ["z"]}
    assert read_scored_candidates(path, ["q1"], depth=2) == {"q1": [("a", 3.0), ("b", 2.0)]}
    (tmp_path / "bad.trec").write_text("q1 a 1\n")
    with pytest.raises(click.BadParameter):
        read_candidates(tmp_path / "bad.trec", ["q1"], 5)


def test_strategies():
    names = [s.name for s in make_strategies(["bi-encoder", "torch-fp32", "prefilter"], (50, 100, 200), "onnx-fp32", 150)]
    assert names == ["bi-encoder", "torch-fp32", "prefilter-50", "prefilter-100"]  # 200 >= depth: skipped
    prefilter = make_strategies(["prefilter"], (20,), "openvino-int8", 50)[0]
    assert (prefilter.engine, prefilter.precision, prefilter.keep) == ("openvino", "int8", 20)
    methods = make_strategies(["prefilter-static", "prefilter-bm25", "prefilter-client", "prefilter-static+bm25"],
                              (50, 100), "onnx-fp32", 1000)
    assert [(s.name, s.method, s.keep) for s in methods[:3]] == [
        ("prefilter-static-50", "static", 50), ("prefilter-static-100", "static", 100), ("prefilter-bm25-50", "bm25", 50)]
    assert methods[-1].name == "prefilter-static+bm25-100" and methods[-1].describe().startswith("static+bm25 keeps 100")
    assert prefilter.method == "bi-encoder"
    with pytest.raises(click.BadParameter):
        make_strategies(["bm25"], (), "onnx-fp32", 100)
    with pytest.raises(click.BadParameter):
        make_strategies(["prefilter"], (10,), "tensorrt", 100)


def _tiny_beir(folder):
    """Six documents about distinct subjects and three queries, in the BEIR layout."""
    docs = {
        "cat": "The cat sleeps on the warm windowsill all afternoon and purrs.",
        "dog": "The dog fetches the ball in the park and barks at squirrels.",
        "bread": "Knead the dough, let it rise for an hour, then bake the bread.",
        "tax": "Income tax returns must be filed before the end of April.",
        "rain": "Heavy rain and strong wind are expected along the coast tonight.",
        "chess": "The knight moves in an L shape on the chess board.",
    }
    queries = {"q-cat": "where does the cat sleep", "q-bread": "how to bake bread", "q-chess": "how does a knight move"}
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq-cat\tcat\t1\nq-bread\tbread\t1\nq-chess\tchess\t1\n"
    )


def test_end_to_end_on_a_tiny_dataset(tmp_path, monkeypatch):
    """Real engines (PyTorch, so nothing is exported) on the untrained test model."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _tiny_beir(tmp_path / "data")
    report = evaluate(
        dataset=tmp_path / "data", split="test", candidates_file=None, depth=5, max_queries=None,
        model=str(ensure_test_model()),
        strategy_names=["torch-fp32", "prefilter", "prefilter-static", "prefilter-bm25", "prefilter-client"], keeps=(2, 5),
        prefilter_engine="torch-fp32", batch_queries=2, threads=1, embedding_cache=0, max_length=None, seed=0,
        out=tmp_path / "out", command="test", progress=lambda line: None,
    )
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert set(saved) >= {"strategies", "dataset", "model"}
    # keep 5 >= depth 5: skipped
    assert list(saved["strategies"]) == ["torch-fp32", "prefilter-2", "prefilter-static-2", "prefilter-bm25-2",
                                         "prefilter-client-2"]
    for row in saved["strategies"].values():
        assert set(row) >= {"ndcg@10", "mrr@10", "recall@100", "retention", "pairs_per_s"}
        assert 0.0 <= row["ndcg@10"] <= 1.0 and row["pairs_per_s"] > 0
        assert row["pairs"] == 3 * 5
    assert saved["strategies"]["torch-fp32"]["retention"] == pytest.approx(1.0)
    assert saved["strategies"]["torch-fp32"]["cross_encoded_pairs"] == 15
    for name in ("prefilter-2", "prefilter-static-2", "prefilter-bm25-2", "prefilter-client-2"):
        row = saved["strategies"][name]
        assert row["cross_encoded_pairs"] == 3 * 2 and row["prefilter_keep"] == 2
        assert 0 < row["prefilter_share"] < 1 and row["prefilter_seconds"] > 0
    assert saved["strategies"]["torch-fp32"]["prefilter_share"] is None
    assert saved["strategies"]["prefilter-client-2"]["prefilter_method"] == "client"
    # The client method ranks by the first stage's own scores (here the bi-encoder's cosines),
    # so it cuts exactly where the bi-encoder prefilter does.
    assert (saved["strategies"]["prefilter-client-2"]["ndcg@10"]
            == pytest.approx(saved["strategies"]["prefilter-2"]["ndcg@10"], abs=1e-6))
    # The bi-encoder first stage finds these relevant documents (distinct subjects).
    assert saved["first_stage"]["recall_at_depth"] == 1.0
    assert report["dataset"]["queries_evaluated"] == 3
    md = (tmp_path / "out" / "eval.md").read_text()
    assert "| torch-fp32 |" in md and "| prefilter-2 |" in md and "| prefilter-bm25-2 |" in md
    assert (tmp_path / "out" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "out" / "candidates.trec").read_text().splitlines()) == 15
