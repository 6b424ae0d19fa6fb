"""Long documents in chunks (#23), end to end through the real local Kafka on the torch fp32 engine
(the untrained-head test model: its scores test fidelity, not relevance).

A request mixes documents several times the model's length with short ones. Each long document's
answer names its best chunk; that span, scored alone by sentence-transformers' CrossEncoder, gives
the document's relevance_score, never below what truncation gives it; short documents score as
they do without chunking.
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

from conftest_workers import client_of, running_worker, unique_topics
from engines.corpus import load_passages, queries
from engines.testmodel import ensure_test_model
from loadgen.client import RerankClient

pytestmark = pytest.mark.kafka

MAX_CHUNKS = 4


@pytest.fixture(scope="module")
def topics() -> dict[str, str]:
    return unique_topics()


@pytest.fixture(scope="module")
def worker(kafka_bootstrap, topics, tmp_path_factory):
    env = {**topics, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "RERANK_MODEL": str(ensure_test_model()),
           "RERANK_ENGINE": "torch", "RERANK_PRECISION": "fp32", "RERANK_REQUEST_PARTITIONS": "1"}
    with running_worker(env, tmp_path_factory.mktemp("worker") / "worker.log") as proc:
        yield proc


@pytest.fixture
def client(kafka_bootstrap, topics, worker):
    with client_of(kafka_bootstrap, topics) as c:
        yield c


def ask(client: RerankClient, request: dict) -> dict:
    client.send(request)
    client.flush()
    assert client.wait([request["request_id"]], 180), "answered"
    [answer] = client.answers(request["request_id"])
    assert answer.response["status"] == "ok", answer.response
    return answer.response


def test_long_documents_take_their_best_chunk_and_short_ones_score_as_before(client):
    passages = load_passages()
    rng = np.random.default_rng(3)
    words = " ".join(passages).split()
    # ~1,400 words: about four times the 512 tokens the model reads.
    longs = [" ".join(words[int(s):int(s) + 1400]) for s in rng.choice(len(words) - 1400, 3, replace=False)]
    shorts = [passages[int(i)] for i in rng.choice(len(passages), 4, replace=False)]
    documents = [longs[0], shorts[0], shorts[1], longs[1], shorts[2], longs[2], shorts[3]]
    query = queries(1, seed=5)[0]
    base = {"query": query, "documents": documents, "raw_scores": True}
    chunked = ask(client, {**base, "request_id": f"ch-{uuid.uuid4().hex[:8]}", "max_chunks_per_doc": MAX_CHUNKS})
    truncated = ask(client, {**base, "request_id": f"tr-{uuid.uuid4().hex[:8]}"})

    got = {r["index"]: r for r in chunked["results"]}
    before = {r["index"]: r for r in truncated["results"]}
    model = CrossEncoder(str(ensure_test_model()), device="cpu", max_length=512)
    spans = []
    for index, text in enumerate(documents):
        if text in shorts:
            assert "chunk" not in got[index]
            assert got[index]["relevance_score"] == pytest.approx(before[index]["relevance_score"], abs=1e-5)
            continue
        chunk = got[index]["chunk"]
        assert 1 < chunk["chunks"] <= MAX_CHUNKS and 0 <= chunk["index"] < chunk["chunks"], chunk
        spans.append((index, text[chunk["start"]:chunk["end"]]))
        assert got[index]["relevance_score"] >= before[index]["relevance_score"] - 1e-5, "never below truncation"
    alone = model.predict([(query, span) for _, span in spans], activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    for (index, _), score in zip(spans, alone):
        assert got[index]["relevance_score"] == pytest.approx(float(score), abs=2e-3)
    assert chunked["meta"]["pairs_scored"] == 4 + sum(got[i]["chunk"]["chunks"] for i, _ in spans)
    assert truncated["meta"]["pairs_scored"] == len(documents)
