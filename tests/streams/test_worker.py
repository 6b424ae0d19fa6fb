"""The worker against the real local Kafka: ranking, bad input, deadlines, reply_to, metrics."""
from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from conftest_workers import running_worker, unique_topics
from engines import EngineConfig, RerankJob, build_reranker
from engines.static_embeddings import ensure_static_model
from engines.testmodel import ensure_test_model
from loadgen.client import RerankClient
from engines.corpus import load_passages

pytestmark = pytest.mark.kafka

ENGINE = "onnx"
PRECISION = "fp32"  # deterministic enough to compare with direct scores at 1e-4


@pytest.fixture(scope="module")
def test_model() -> str:
    ensure_static_model()  # distilled here if the cache lacks it, so the worker's warm-up only loads it
    return str(ensure_test_model())


@pytest.fixture(scope="module")
def topics() -> dict[str, str]:
    return unique_topics()


@pytest.fixture(scope="module")
def worker(kafka_bootstrap, test_model, topics, tmp_path_factory):
    env = {**topics, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "RERANK_MODEL": test_model,
           "RERANK_ENGINE": ENGINE, "RERANK_PRECISION": PRECISION, "RERANK_REQUEST_PARTITIONS": "2",
           "RERANK_MAX_DOCUMENTS": "500", "RERANK_SUMMARY_EVERY_S": "2"}
    with running_worker(env, tmp_path_factory.mktemp("worker") / "worker.log") as proc:
        yield proc


@pytest.fixture
def client(kafka_bootstrap, topics, worker):
    with RerankClient(kafka_bootstrap, topics["RERANK_REQUEST_TOPIC"],
                      [topics["RERANK_RESPONSE_TOPIC"]]) as c:
        yield c


@pytest.fixture(scope="module")
def direct(test_model):
    """The same engine in this process, scoring each request alone."""
    return build_reranker(EngineConfig(engine=ENGINE, model=test_model, precision=PRECISION))


def only_answer(client, request_id):
    answers = client.answers(request_id)
    assert len(answers) == 1, f"{request_id}: expected one answer, got {len(answers)}"
    return answers[0].response


def test_ranked_responses_equal_direct_engine_scores_for_mixed_sizes(client, direct):
    passages = load_passages()
    rng = np.random.default_rng(int(time.time()))
    sizes = [1, 3, 12, 40, 99, 150]  # 150 > prefilter_threshold: prefiltered
    requests = []
    for n in sizes:
        docs = [passages[int(i)] for i in rng.choice(len(passages), n, replace=False)]
        req = {"request_id": f"mix-{n}-{uuid.uuid4().hex[:6]}", "query": passages[int(rng.integers(len(passages)))][:80],
               "documents": docs}
        if n == 12:
            req.update(top_n=5, return_documents=True)
        requests.append(req)
    for req in requests:
        client.send(req)
    client.flush()
    assert client.wait([r["request_id"] for r in requests], 120), "every request answered"

    for req in requests:
        resp = only_answer(client, req["request_id"])
        assert resp["status"] == "ok", resp
        (outcome,) = direct.rerank([RerankJob(req["query"], req["documents"])])
        expected = outcome.relevance
        results = resp["results"]
        n = len(req["documents"])
        assert resp["meta"]["documents"] == n
        assert len(results) == (req.get("top_n") or n)
        for r in results:
            assert r["relevance_score"] == pytest.approx(expected[r["index"]], abs=1e-4)
        # the order is the engine's order (cross-encoded first), up to near-ties
        got = [r["index"] for r in results]
        want = [int(i) for i in outcome.order[: len(got)]]
        for a, b in zip(got, want):
            assert a == b or abs(expected[a] - expected[b]) < 1e-4
        if n == 150:
            assert resp["meta"]["prefiltered"] is True
            assert resp["meta"]["scored_by_cross_encoder"] == 100
            assert {r["stage"] for r in results[:100]} == {"cross_encoder"}
            assert {r["stage"] for r in results[100:]} == {"prefilter"}
        if req.get("return_documents"):
            assert all(r["document"]["text"] == req["documents"][r["index"]] for r in results)
        else:
            assert all("document" not in r for r in results)


def test_the_prefilter_method_of_a_request_is_honoured(client, direct):
    rng = np.random.default_rng(int(time.time()))
    passages = load_passages()
    docs = [passages[int(i)] for i in rng.choice(len(passages), 150, replace=False)]  # > threshold 100
    scores = [float(s) for s in rng.normal(size=150)]
    query = passages[int(rng.integers(len(passages)))][:80]
    tag = uuid.uuid4().hex[:6]
    objects = [{"text": d, "score": s} for d, s in zip(docs, scores)]
    requests = {method: {"request_id": f"method-{method}-{tag}", "query": query, "documents": objects,
                         "prefilter": {"method": method, "keep": 10}}
                for method in ("static", "bm25", "client", "static+bm25", "bi-encoder")}
    # The caller's scores are needed only when the client method cuts the request.
    unscored = [*objects[:3], docs[3], {"text": docs[4]}, *objects[5:]]
    requests["missing"] = {**requests["client"], "request_id": f"method-missing-{tag}", "documents": unscored}
    requests["small"] = {**requests["missing"], "request_id": f"method-small-{tag}", "documents": unscored[:20],
                         "prefilter": {"method": "client"}}  # 20 documents: not prefiltered
    for req in requests.values():
        client.send(req)
    client.flush()
    assert client.wait([r["request_id"] for r in requests.values()], 120), "every request answered"

    missing = only_answer(client, requests.pop("missing")["request_id"])
    assert missing["status"] == "error" and missing["error"]["code"] == "invalid_request"
    assert "prefilter method 'client'" in missing["error"]["message"]
    assert "documents[3], documents[4] have none" in missing["error"]["message"]
    small = only_answer(client, requests.pop("small")["request_id"])
    assert small["status"] == "ok" and small["meta"]["prefiltered"] is False
    for method, req in requests.items():
        resp = only_answer(client, req["request_id"])
        assert resp["status"] == "ok", resp
        assert resp["meta"]["prefiltered"] is True and resp["meta"]["scored_by_cross_encoder"] == 10
        (outcome,) = direct.rerank([RerankJob(query, docs, keep=10, method=method, scores=scores)])
        assert outcome.first_stage == method
        expected = outcome.relevance
        results = resp["results"]
        assert [r["stage"] for r in results] == ["cross_encoder"] * 10 + ["prefilter"] * 140
        assert {r["index"] for r in results[:10]} == set(np.flatnonzero(outcome.cross_encoded))
        for r in results:
            assert r["relevance_score"] == pytest.approx(expected[r["index"]], abs=1e-4)
        if method == "client":  # the uncut documents carry the caller's own score
            assert all(r["relevance_score"] == pytest.approx(scores[r["index"]], abs=1e-6) for r in results[10:])
            assert {r["index"] for r in results[:10]} == set(np.argsort(scores)[-10:])


def read_topic(bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < expect and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            out.append(msg)
    consumer.close()
    return out


def test_every_bad_input_is_answered_and_a_good_request_still_is(client, kafka_bootstrap, topics):
    dlq = topics["RERANK_DEAD_LETTER_TOPIC"]
    good_doc = "Kafka partitions spread load across consumers."
    tag = uuid.uuid4().hex[:6]

    def body(name, **fields):
        return json.dumps({"request_id": f"{name}-{tag}", "query": "q", "documents": [good_doc], **fields}).encode()

    # name -> (message value, expected error code); the key is always f"{name}-{tag}"
    cases = {
        # not UTF-8 / not JSON: DLQ, and an error response under the record key
        "bytes": (b"\xff\xfe\x00garbage", "invalid_request"),
        "notjson": (b"{this is not json", "invalid_request"),
        "nested": (b"[" * 100_000 + b"]" * 100_000, "invalid_request"),
        "schema": (body("schema", query=""), "invalid_request"),
        "types": (body("types", query=5), "invalid_request"),
        "extra": (body("extra", colour="blue"), "invalid_request"),
        "toolarge": (body("toolarge", documents=[good_doc] * 501), "too_large"),
        "model": (body("model", model="nobody/serves-this"), "unknown_model"),
        "deadline": (body("deadline", deadline_ms=int(time.time() * 1000) - 1000), "deadline_exceeded"),
        "replyto": (body("replyto", reply_to=topics["RERANK_REQUEST_TOPIC"]), "invalid_request"),
    }
    ids = {}
    for name, (value, _) in cases.items():
        ids[name] = client.send_raw(value, key=f"{name}-{tag}")
    # unreadable and keyless: it can only go to the dead-letter topic
    client.send_raw(b"\x00\x01 no key", key=None, request_id=f"keyless-{tag}")
    good = {"request_id": f"good-{tag}", "query": "how are partitions shared", "documents": [good_doc, "cats"]}
    client.send(good)
    client.flush()
    assert client.wait([*ids.values(), good["request_id"]], 60), \
        f"unanswered: {[k for k, v in ids.items() if not client.answers(v)]}"

    for name, (_, code) in cases.items():
        resp = only_answer(client, ids[name])
        assert resp["status"] == "error", (name, resp)
        assert resp["error"]["code"] == code, (name, resp)
        assert resp["error"]["message"], name
    assert only_answer(client, good["request_id"])["status"] == "ok"

    dead = read_topic(kafka_bootstrap, dlq, expect=4)
    assert len(dead) == 4, "bytes, notjson, nested and the keyless message are dead-lettered"
    originals = {m.value() for m in dead}
    assert b"\xff\xfe\x00garbage" in originals and b"{this is not json" in originals
    assert b"\x00\x01 no key" in originals
    for m in dead:
        headers = dict(m.headers())
        assert headers["error-code"] == b"invalid_request"
        assert headers["error-message"]


def counter(metrics_text: str, name: str, **labels: str) -> float:
    """One sample of the worker's /metrics text (0 when it has not been counted yet)."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_a_lone_request_goes_to_a_free_engine_at_once(client):
    """Nothing else is queued and the engine is free: the request is scored as soon as it is
    taken, not held to gather others."""
    docs = [f"passage {i} about how Kafka consumer groups share partitions" for i in range(10)]
    rid = client.send({"request_id": f"lone-{uuid.uuid4().hex[:6]}", "query": "consumer groups", "documents": docs})
    client.flush()
    assert client.wait([rid], 60)
    meta = only_answer(client, rid)["meta"]
    assert meta["queue_ms"] < 500, f"held {meta['queue_ms']} ms before the engine began: {meta}"
    assert meta["total_ms"] < meta["queue_ms"] + meta["inference_ms"] + 1000, meta


def test_a_small_request_is_answered_while_a_large_one_is_still_scored(client):
    """The scheduler takes every micro-batch from all pending pairs: a small request that
    arrives while a large one is scored goes next and is answered at once, not after it."""
    passages = load_passages()
    large = client.send({"request_id": f"large-{uuid.uuid4().hex[:6]}", "query": "how do partitions work",
                         "documents": passages[:200], "prefilter": {"enabled": False}})
    client.flush()
    time.sleep(0.3)  # the large one is taken and its micro-batches run
    small = client.send({"request_id": f"small-{uuid.uuid4().hex[:6]}", "query": "consumer groups",
                         "documents": passages[:5]})
    client.flush()
    assert client.wait([large, small], 120)
    large_answer, small_answer = client.answers(large)[0], client.answers(small)[0]
    assert len(large_answer.response["results"]) == 200
    assert small_answer.received_at < large_answer.received_at, (
        f"the small request waited for the large one: {small_answer.response['meta']}")


def test_reply_to_with_the_allowed_prefix_is_honoured(kafka_bootstrap, topics, worker, new_topic):
    reply_topic = topics["RERANK_REPLY_TO_PREFIX"] + uuid.uuid4().hex[:6]
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(reply_topic, 1, 1)])[reply_topic].result(30)
    before = worker.metrics()
    with RerankClient(kafka_bootstrap, topics["RERANK_REQUEST_TOPIC"],
                      [topics["RERANK_RESPONSE_TOPIC"], reply_topic]) as c:
        rid = c.send({"request_id": f"rt-{uuid.uuid4().hex[:6]}", "query": "q", "documents": ["a", "b"],
                      "reply_to": reply_topic})
        missing = c.send({"request_id": f"rtm-{uuid.uuid4().hex[:6]}", "query": "q", "documents": ["a"],
                          "reply_to": topics["RERANK_REPLY_TO_PREFIX"] + "does-not-exist"})
        c.flush()
        assert c.wait([rid, missing], 90)
        (answer,) = c.answers(rid)
        assert answer.topic == reply_topic and answer.response["status"] == "ok"
        (fallback,) = c.answers(missing)
        assert fallback.topic == topics["RERANK_RESPONSE_TOPIC"]
        assert fallback.response["error"]["code"] == "invalid_request"

    # The rerouted answer is counted as the invalid_request error it is, not as ok.
    def delta(text, name, **labels):
        return counter(text, name, **labels) - counter(before, name, **labels)
    deadline = time.monotonic() + 10  # counted once the broker acknowledged the answer
    while True:
        after = worker.metrics()
        counted = [delta(after, "rerank_requests_total", status=status) for status in ("ok", "error")]
        if min(counted) >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert delta(after, "rerank_requests_total", status="ok") == 1
    assert delta(after, "rerank_requests_total", status="error") == 1
    assert delta(after, "rerank_errors_total", code="invalid_request") == 1


def test_metrics_and_health_endpoints(worker, client):
    rid = client.send({"request_id": f"m-{uuid.uuid4().hex[:6]}", "query": "q", "documents": ["x", "y", "z"]})
    client.flush()
    assert client.wait([rid], 60)
    text = worker.metrics()
    assert 'rerank_requests_total{status="ok"}' in text
    assert 'rerank_inference_seconds_bucket{kind="micro_batch"' in text
    # The scheduler's decisions, and queue time by request size.
    assert counter(text, "rerank_scheduler_steps_total", kind="micro_batch") >= 1
    assert 'rerank_queue_seconds_bucket{le="+Inf",size="1-15"}' in text
    assert counter(text, "rerank_micro_batch_tokens_total", kind="padded") >= counter(
        text, "rerank_micro_batch_tokens_total", kind="real") > 0
    health = worker.status("/healthz")
    assert health["alive"] is True and health["partitions"] == 2
    # faust's leader-election topic is off (streams/app.py): aiokafka no longer looks it up in vain
    log = worker.log_path.read_text(errors="replace")
    assert "__assignor-__leader" not in log and "not found in cluster metadata" not in log


def test_loadgen_cli_against_the_worker_writes_json_and_plot(kafka_bootstrap, topics, worker, tmp_path):
    import subprocess
    import sys

    out_json, out_png = tmp_path / "run.json", tmp_path / "run.png"
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", "--bootstrap", kafka_bootstrap,
         "--request-topic", topics["RERANK_REQUEST_TOPIC"], "--response-topic", topics["RERANK_RESPONSE_TOPIC"],
         "--concurrency", "2", "--requests", "12", "--docs", "4-15", "--json", str(out_json),
         "--plot", str(out_png), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out_json.read_text())
    for key in ("lost", "requests_per_s", "docs_per_s", "p50", "p90", "p99"):
        assert key in figures
    assert figures["lost"] == 0 and figures["answered"] == 12
    assert figures["p50"] <= figures["p90"] <= figures["p99"]
    assert out_png.stat().st_size > 10_000 and out_png.read_bytes()[:4] == b"\x89PNG"
