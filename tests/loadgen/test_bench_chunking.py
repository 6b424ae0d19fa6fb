"""The chunking benchmark measures what it says: more chunks, more pairs, each setting timed."""
from __future__ import annotations

from engines import EngineConfig, build_reranker
from engines.testmodel import ensure_test_model
from loadgen.bench.chunking import long_request, markdown, measure


def test_each_setting_scores_its_chunks_and_is_timed():
    reranker = build_reranker(EngineConfig(engine="onnx", model=str(ensure_test_model()), precision="fp32",
                                           max_length=128))
    job = long_request(documents=2, words=600)
    assert [len(d.split()) for d in job.documents] == [600, 600]
    rows = measure(reranker, job, settings=(1, 3), rounds=1)
    assert rows[1]["pairs"] == 2 and rows[3]["pairs"] == 6  # 600 words are far past 128 tokens
    assert all(r["latency_ms_median"] > 0 and r["pairs_per_s"] > 0 for r in rows.values())
    text = markdown({"engine": reranker.engine_name, "documents": 2, "words": 600, "rounds": 1, "rows": rows,
                     "machine": {"cpu_model": "test", "cpus": 2}})
    assert "| 3 | 6 |" in text
