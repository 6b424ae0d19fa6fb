"""The hybrid benchmark of loadgen.bench.engine_speed at a tiny size: every first stage runs
prefiltered, side by side with full cross-encoding, and the report says where the time went."""
from __future__ import annotations

import os

import pytest

from engines import EngineConfig, build_reranker
from vocabulary import PREFILTER_METHODS
from engines.corpus import load_passages
from engines.testmodel import ensure_test_model
from loadgen.bench.engine_speed import _hybrid_lines, bench_hybrid, hybrid_documents


@pytest.fixture(scope="module")
def reranker():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return build_reranker(EngineConfig(engine="onnx", model=str(ensure_test_model()), precision="fp32", device="cpu",
                                       prefilter_keep=6, prefilter_method="bm25"))


def test_every_method_is_measured_cold_and_warm(reranker):
    result = bench_hybrid(reranker, load_passages(), seed=3, repeats=1, documents=40)
    assert result["documents"] == 40 and result["kept"] == 6 and result["full_s"] > 0
    assert list(result["methods"]) == list(PREFILTER_METHODS)
    for method, row in result["methods"].items():
        for state in ("cold", "warm"):
            run = row[state]
            assert run["cross_encoded"] == 6, method
            assert 0 < run["prefilter_s"] < run["s"] and run["cross_encoder_s"] < run["s"]
            assert run["prefilter_tokenize_s"] <= run["prefilter_s"]
        assert row["speedup"] == pytest.approx(result["full_s"] / row["cold_s"])
        assert 0 < row["prefilter_share"] < 1
        assert row["first_sight_prefilter_s"] > 0
    # bm25 reads words, static plain ASCII texts as pre-tokens, and the client's scores need
    # nothing: the cross-encoder's tokenizer does not run for them.
    import random

    documents = hybrid_documents(load_passages(), 40, random.Random(3))  # bench_hybrid's own
    assert all(reranker.static_embeddings.reads_as_words(d) for d in documents)
    assert result["methods"]["static"]["cold"]["prefilter_tokenize_s"] == 0
    assert result["methods"]["bm25"]["cold"]["prefilter_tokenize_s"] == 0
    assert result["methods"]["client"]["cold"]["prefilter_tokenize_s"] == 0
    # The worker's default method's figures also sit under the keys earlier reports used.
    assert result["default_method"] == "bm25" and result["speedup"] == result["methods"]["bm25"]["speedup"]
    lines = "\n".join(_hybrid_lines({"hybrid_1000": result, "hybrid_engine": reranker.engine_name}))
    assert all(f"| {method} |" in lines for method in PREFILTER_METHODS)


def test_past_the_corpus_the_hybrid_documents_are_distinct_splices_of_passages():
    import random

    passages = load_passages()[:50]
    documents = hybrid_documents(passages, 120, random.Random(1))
    assert len(documents) == len(set(documents)) == 120
    assert set(documents[:50]) == set(passages)
    assert hybrid_documents(passages, 20, random.Random(1)) == random.Random(1).sample(passages, 20)
