"""loadgen measures the service, not itself: answers timed as they arrive, the latency
split into parts, and a plain per-message consumer that agrees with it (and that a client
batching its reads would not agree with)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME

from engines.testmodel import ensure_test_model
from loadgen.client import Answer, RerankClient, SentRequest
from loadgen.cluster.workers import WorkerProcess
from loadgen.plain_consumer import PlainConsumer
from loadgen.run import (BREAKDOWN, UNACCOUNTED, RequestFactory, answer_breakdown, compare_with_plain,
                         parse_distribution, run_load)

# A client that stamps answers when a batch read returns (consume(500, 0.2)) is late by
# up to 200 ms, about 100 ms at the median; loadgen and the plain consumer must agree far
# more closely than that, with room for a machine shared with other jobs.
TOLERANCE_MS = 25.0


def ok_answer(latency_s: float, received_wall: float, answer_ts_ms: int, meta: dict) -> Answer:
    response = {"request_id": "r", "status": "ok", "results": [], "meta": meta}
    return Answer("r", response, latency_s, 100.0 + latency_s, "resp", received_wall,
                  (TIMESTAMP_CREATE_TIME, answer_ts_ms))


def test_breakdown_parts_account_for_the_whole_latency():
    # sent at wall 1000.000 s; acked after 3 ms; the worker took it 5 ms later, waited
    # 20 ms, scored for 15 ms, built the answer in 1 ms (total 36 ms) and its producer
    # stamped the answer record at 1000.044 s; the client polled it at 1000.047 s
    pending = SentRequest(sent_at=100.0, documents=10, sent_wall=1000.0, to_broker_s=0.003)
    answer = ok_answer(0.047, 1000.047, 1_000_044,
                       {"queue_ms": 20.0, "inference_ms": 15.0, "total_ms": 36.0})
    parts = answer_breakdown(pending, answer)
    assert parts["to_broker_ms"] == pytest.approx(3.0)
    assert parts["to_worker_ms"] == pytest.approx(5.0)
    assert parts["queue_ms"] == 20.0 and parts["inference_ms"] == 15.0
    assert parts["answering_ms"] == pytest.approx(1.0)
    assert parts["to_client_ms"] == pytest.approx(3.0)
    assert parts["end_to_end_ms"] == pytest.approx(47.0)
    assert parts[UNACCOUNTED] == pytest.approx(0.0, abs=1e-6)
    assert {p.key for p in BREAKDOWN} | {UNACCOUNTED} == set(parts)


def test_no_breakdown_without_meta_or_timestamps():
    pending = SentRequest(sent_at=100.0, documents=1, sent_wall=1000.0, to_broker_s=0.003)
    error = Answer("r", {"request_id": "r", "status": "error", "error": {"code": "too_large", "message": "x"}},
                   0.01, 100.01, "resp", 1000.01, (TIMESTAMP_CREATE_TIME, 1_000_005))
    assert answer_breakdown(pending, error) is None
    ok = ok_answer(0.01, 1000.01, 1_000_005, {"queue_ms": 1.0, "inference_ms": 1.0, "total_ms": 3.0})
    assert answer_breakdown(SentRequest(100.0, 1, sent_wall=1000.0), ok) is None  # no delivery report
    ok.record_timestamp = None
    assert answer_breakdown(pending, ok) is None


# --- against the real broker and a real worker ------------------------------------------

@pytest.fixture(scope="module")
def service(kafka_bootstrap, tmp_path_factory):
    tag = uuid.uuid4().hex[:8]
    topics = {"RERANK_REQUEST_TOPIC": f"inst-req-{tag}", "RERANK_RESPONSE_TOPIC": f"inst-resp-{tag}",
              "RERANK_DEAD_LETTER_TOPIC": f"inst-dlq-{tag}", "RERANK_GROUP_ID": f"inst-{tag}"}
    env = {**topics, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "RERANK_MODEL": str(ensure_test_model()),
           "RERANK_ENGINE": "onnx", "RERANK_PRECISION": "fp32"}
    worker = WorkerProcess(env, tmp_path_factory.mktemp("instrument") / "worker.log", "instrument-worker").start()
    try:
        worker.wait_ready()
        yield kafka_bootstrap, topics["RERANK_REQUEST_TOPIC"], topics["RERANK_RESPONSE_TOPIC"]
    finally:
        assert worker.stop() == 0, worker.tail(20)


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_loadgen_agrees_with_a_plain_per_message_consumer(service, tmp_path):
    bootstrap, request_topic, response_topic = service
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", "--bootstrap", bootstrap, "--request-topic", request_topic,
         "--response-topic", response_topic, "--rate", "4", "--requests", "24", "--docs", "10",
         "--check-with-plain-consumer", "--json", str(out), "--quiet"],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    check = report["plain_consumer_check"]
    print(json.dumps({k: report[k] for k in ("breakdown", "client_overhead")}, indent=1), json.dumps(check))
    assert check["answers_compared"] == 24 and check["plain_missed"] == 0
    assert abs(check["p50_difference_ms"]) < TOLERANCE_MS
    assert abs(check["arrival_gap_p50_ms"]) < TOLERANCE_MS
    # the breakdown is there for every answer, and its parts add up to the whole
    assert report["breakdown_answers"] == 24 and len(report["per_answer"]) == 24
    assert set(report["breakdown"]) == {p.key for p in BREAKDOWN} | {UNACCOUNTED}
    assert abs(report["breakdown"][UNACCOUNTED]["p50_ms"]) < 3.0
    assert report["breakdown"]["inference_ms"]["p50_ms"] > 0
    # reading answers costs loadgen next to nothing (it does not spin on a core)
    assert report["client_overhead"]["receive_thread_cpu_share"] < 0.1
    assert "latency breakdown" in proc.stdout and "plain consumer" in proc.stdout


class BatchReadingClient(RerankClient):
    """What loadgen used to do: stamp every answer when consume(500, 0.2) returns."""

    def _poll(self) -> None:
        while not self._stop.is_set():
            for msg in self.consumer.consume(500, 0.2):
                now, now_wall = time.monotonic(), time.time()
                if not msg.error():
                    self._record(msg, now, now_wall)


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_the_check_catches_a_client_that_batches_its_reads(service):
    bootstrap, request_topic, response_topic = service
    with BatchReadingClient(bootstrap, request_topic, [response_topic]) as client, \
            PlainConsumer(bootstrap, [response_topic]) as checker:
        result = run_load(client, RequestFactory(parse_distribution("10"), seed=1), rate=4, requests=16,
                          show_progress=False)
        arrivals = checker.collect([row["request_id"] for row in result.per_answer])
        check = compare_with_plain(result, client.snapshot(), arrivals)
    print(json.dumps(check))
    assert check["answers_compared"] == 16
    assert check["arrival_gap_p50_ms"] > TOLERANCE_MS and check["p50_difference_ms"] > TOLERANCE_MS
