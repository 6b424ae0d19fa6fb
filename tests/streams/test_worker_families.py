"""A family other than BERT end to end through the real local Kafka: a worker serving the ModernBERT
stand-in of engines.standins (byte-level BPE, no token_type_ids, mean pooling, sliding-window
layers; random weights, so its scores test fidelity, not relevance).

The answers must carry the checkpoint's own transformers scores (fp32 within 1e-3) through the
model's sentence-transformers activation, documents longer than its attention window included.
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from conftest_workers import client_of, running_worker, unique_topics
from engines.corpus import load_passages, queries
from engines.families import activate, inspect_reranker
from engines.fidelity import model_max_length, reference_scores
from engines.models import ModelFolder
from engines.standins import ensure_standin

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def model() -> str:
    return str(ensure_standin("gte-modernbert"))


@pytest.fixture(scope="module")
def topics() -> dict[str, str]:
    return unique_topics()


@pytest.fixture(scope="module")
def worker(kafka_bootstrap, model, topics, tmp_path_factory):
    env = {**topics, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "RERANK_MODEL": model,
           "RERANK_ENGINE": "onnx", "RERANK_PRECISION": "fp32", "RERANK_REQUEST_PARTITIONS": "2"}
    with running_worker(env, tmp_path_factory.mktemp("worker") / "worker.log") as proc:
        yield proc


@pytest.fixture
def client(kafka_bootstrap, topics, worker):
    with client_of(kafka_bootstrap, topics) as c:
        yield c


def test_modernbert_answers_equal_transformers_through_its_activation(client, model):
    passages = load_passages()
    rng = np.random.default_rng(7)
    long_document = " ".join(passages[:12])  # far past the 16-token window, within 8192 tokens
    requests = []
    for k, query in enumerate(queries(4, seed=11)):
        docs = [passages[int(i)] for i in rng.choice(len(passages), 6, replace=False)] + [long_document, ""]
        requests.append({"request_id": f"mb-{k}-{uuid.uuid4().hex[:6]}", "query": query, "documents": docs,
                         "raw_scores": k == 0})
    for request in requests:
        client.send(request)
    client.flush()
    assert client.wait([r["request_id"] for r in requests], 120), "every request answered"

    folder = ModelFolder.load(model)
    kind = inspect_reranker(folder)
    length = model_max_length(folder, kind)
    for request in requests:
        answers = client.answers(request["request_id"])
        assert len(answers) == 1
        response = answers[0].response
        assert response["status"] == "ok" and response["engine"] == "onnx-fp32", response
        logits = reference_scores(folder, [request["query"]] * len(request["documents"]), request["documents"],
                                  length, kind=kind)
        want = logits if request["raw_scores"] else activate(kind.activation, logits)
        got = {r["index"]: r["relevance_score"] for r in response["results"]}
        np.testing.assert_allclose([got[i] for i in range(len(want))], want, atol=1e-3, rtol=0)
        ranked = [r["relevance_score"] for r in response["results"]]
        assert ranked == sorted(ranked, reverse=True)
