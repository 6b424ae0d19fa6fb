"""Faults under load against a real Kafka and real worker processes: the broker restarts,
workers are SIGKILLed or replaced, answers cannot be produced for a while or at all.

Each test sends a steady open-loop load, injects its fault, stops the load and then
counts per request_id what was sent, answered, answered more than once and lost. Lost
must be 0 in every one; duplicates are allowed where a worker dies (at-least-once) and
reported. ``make test-faults`` runs only these.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, TopicPartition

from engines.testmodel import ensure_test_model
from loadgen.client import RerankClient
from loadgen.cluster.faults import (
    AckCutter,
    RestartableBroker,
    SteadyLoad,
    failover,
    set_topic_config,
    short_requests,
    tally,
)
from loadgen.cluster.workers import WorkerProcess
from loadgen.cluster.workers import wait_split as wait_until_split

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

PARTITIONS = 4
RATE = 3.0  # requests/s of 2-6 short documents: within one worker's speed on 2 busy shared cores


def worker_env(bootstrap: str, tag: str, **extra: str) -> dict[str, str]:
    """The small ONNX fp32 test model, 4 request partitions, quick failure detection."""
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "RERANK_MODEL": str(ensure_test_model()),
            "RERANK_ENGINE": "onnx", "RERANK_PRECISION": "fp32",
            "RERANK_REQUEST_TOPIC": f"req-{tag}", "RERANK_RESPONSE_TOPIC": f"resp-{tag}",
            "RERANK_DEAD_LETTER_TOPIC": f"dlq-{tag}", "RERANK_GROUP_ID": f"workers-{tag}",
            "RERANK_REPLY_TO_PREFIX": f"replies-{tag}.",
            "RERANK_REQUEST_PARTITIONS": str(PARTITIONS), "RERANK_RESPONSE_PARTITIONS": "2",
            "RERANK_SUMMARY_EVERY_S": "2",
            "RERANK_SESSION_TIMEOUT_S": "6", "RERANK_HEARTBEAT_INTERVAL_S": "1", **extra}


def wait_split(workers: list[WorkerProcess], timeout_s: float = 90.0) -> list[int]:
    """Waits until every worker holds partitions and together they hold all PARTITIONS."""
    return wait_until_split(workers, PARTITIONS, timeout_s)


def assert_duplicates_agree(client: RerankClient, ids: list[str]) -> float:
    """A duplicate answer (a redelivered request) carries the same ranking up to float noise."""
    worst = 0.0
    for request_id in ids:
        got = client.answers(request_id)
        if len(got) < 2 or any(g.response["status"] != "ok" for g in got):
            continue
        first, *rest = [{r["index"]: r["relevance_score"] for r in g.response["results"]} for g in got]
        for other in rest:
            assert first.keys() == other.keys(), f"{request_id}: duplicates rank other documents"
            worst = max(worst, max(abs(first[i] - other[i]) for i in first))
    assert worst < 1e-3, f"duplicate answers disagree by {worst}"
    return worst


@pytest.mark.timeout(300)
def test_broker_restart_under_load_worker_reconnects_and_answers_every_request(tmp_path):
    """The worker's broker goes down for ~6 s (controlled shutdown, data kept) and comes
    back on the same port; requests keep arriving (the client buffers them meanwhile)."""
    tag = uuid.uuid4().hex[:8]
    with RestartableBroker(state_dir=tmp_path / "kafka") as broker:
        worker = WorkerProcess(worker_env(broker.bootstrap, tag), tmp_path / "w.log", "worker-r").start()
        try:
            worker.wait_ready()
            wait_split([worker])
            with RerankClient(broker.bootstrap, f"req-{tag}", [f"resp-{tag}"]) as client:
                load = SteadyLoad(client, short_requests(11), RATE).start()
                assert load.wait_answers(20, 90), "no steady state before the fault"
                t0 = time.monotonic()
                stop_s = broker.stop()
                time.sleep(6)
                start_s = broker.start()
                answered_at_restart = client.answered()
                # load goes on after the restart; the worker must pick it up again
                assert load.wait_answers(answered_at_restart + 30, 120), \
                    "the worker answers nothing after the broker came back:\n" + worker.tail()
                ids = load.stop()
                client.wait(ids, 150)
                result = tally(client, ids)
                worst = assert_duplicates_agree(client, ids)
                print(f"\nbroker restart: stop {stop_s:.1f} s, down 6 s, start {start_s:.1f} s; "
                      f"{result.line()}; worst duplicate difference {worst:.1e}; "
                      f"{time.monotonic() - t0:.0f} s from the fault to the last answer")
                assert result.lost == 0, f"lost after a broker restart: {result.lost_ids}"
                assert result.answered > answered_at_restart, "nothing answered after the restart"
                assert set(result.statuses) == {"ok"}, result.statuses
            assert worker.proc.poll() is None, "the worker died instead of reconnecting:\n" + worker.tail()
        finally:
            code = worker.stop()
            print(worker.tail(8))
        assert code == 0, f"worker exit code {code} on SIGTERM after the broker restart"


@pytest.mark.timeout(420)
@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_three_sigkills_of_two_replicas_under_load_lose_no_request(kafka_bootstrap, tmp_path, delivery):
    """Two replicas; three times: SIGKILL one mid-load, start a replacement, wait until the
    two share the partitions again. Killed workers commit nothing, so their unanswered
    requests are redelivered: at least once, duplicates are possible and losses are not; exactly
    once (answers and offsets in one transaction), a read_committed client sees neither."""
    tag = uuid.uuid4().hex[:8]
    env = worker_env(kafka_bootstrap, tag, RERANK_DELIVERY=delivery)
    workers = {"a": WorkerProcess(env, tmp_path / "a0.log", "worker-a0").start(),
               "b": WorkerProcess(env, tmp_path / "b0.log", "worker-b0").start()}
    try:
        for w in workers.values():
            w.wait_ready()
        wait_split(list(workers.values()))
        with RerankClient(kafka_bootstrap, f"req-{tag}", [f"resp-{tag}"]) as client:
            load = SteadyLoad(client, short_requests(12), RATE).start()
            t0 = time.monotonic()
            first_kill = recovered = t0
            for round_, slot in enumerate(["a", "b", "a"], start=1):
                assert load.wait_answers(client.answered() + 10, 90), f"round {round_}: no progress before the kill"
                if round_ == 1:
                    first_kill = time.monotonic()
                workers[slot].kill()  # mid-load, mid-request: no goodbye, no commit
                replacement = WorkerProcess(env, tmp_path / f"{slot}{round_}.log", f"worker-{slot}{round_}")
                workers[slot] = replacement.start()
                replacement.wait_ready()
                wait_split(list(workers.values()))
                if round_ == 1:
                    recovered = time.monotonic()
            assert load.wait_answers(client.answered() + 10, 90), "no progress after the last replacement"
            ids = load.stop()
            client.wait(ids, 150)
            result = tally(client, ids)
            worst = assert_duplicates_agree(client, ids)
            print(f"\n3 x SIGKILL, {delivery}: {result.line()}; worst duplicate difference {worst:.1e}; "
                  f"{time.monotonic() - t0:.0f} s under load; {failover(client, ids, first_kill, recovered).line()}")
            # A duplicate is the killed worker's answer repeated by the partition's next holder; the
            # surviving worker commits before its partitions move, so it repeats none of its own.
            repeated_by_one = [i for i in ids if len(client.answers(i)) > 1 and
                               len({a.response["meta"]["worker"] for a in client.answers(i)}) == 1]
            assert repeated_by_one == [], f"a worker answered its own requests twice: {repeated_by_one[:5]}"
            assert result.lost == 0, f"lost after SIGKILLs: {result.lost_ids}"
            if delivery == "exactly_once":
                assert result.duplicated == 0, f"{result.duplicated} requests answered twice in exactly_once"
            assert set(result.statuses) == {"ok"}, result.statuses
    finally:
        for w in workers.values():
            w.kill()


@pytest.mark.timeout(300)
def test_rebalance_two_to_one_to_two_replicas_under_load_answers_every_request(kafka_bootstrap, tmp_path):
    """Scale in (SIGTERM one of two: it answers what it took and commits) then out again
    (a new replica joins) while requests keep coming."""
    tag = uuid.uuid4().hex[:8]
    env = worker_env(kafka_bootstrap, tag)
    a = WorkerProcess(env, tmp_path / "a.log", "worker-a").start()
    b = WorkerProcess(env, tmp_path / "b.log", "worker-b").start()
    c = WorkerProcess(env, tmp_path / "c.log", "worker-c")
    try:
        a.wait_ready()
        b.wait_ready()
        split_two = wait_split([a, b])
        with RerankClient(kafka_bootstrap, f"req-{tag}", [f"resp-{tag}"]) as client:
            load = SteadyLoad(client, short_requests(13), RATE).start()
            t0 = time.monotonic()
            assert load.wait_answers(20, 90)
            code_b = b.stop()  # 2 -> 1
            split_one = wait_split([a])
            assert load.wait_answers(client.answered() + 20, 90), "the remaining replica does not answer"
            c.start().wait_ready()  # 1 -> 2
            split_again = wait_split([a, c])
            assert load.wait_answers(client.answered() + 20, 90), "no progress after scaling out"
            ids = load.stop()
            client.wait(ids, 120)
            result = tally(client, ids)
            worst = assert_duplicates_agree(client, ids)
            by_worker: dict[str, int] = {}
            for i in ids:
                for answer in client.answers(i):
                    name = answer.response["meta"]["worker"]
                    by_worker[name] = by_worker.get(name, 0) + 1
            print(f"\nrebalance 2->1->2 (partitions {split_two} -> {split_one} -> {split_again}): {result.line()}; "
                  f"answers by worker {by_worker}; worst duplicate difference {worst:.1e}; "
                  f"{time.monotonic() - t0:.0f} s under load")
            assert code_b == 0, f"worker-b exit code {code_b} on SIGTERM"
            assert result.lost == 0, f"lost in a rebalance: {result.lost_ids}"
            # Nobody died: what was answered was committed before partitions moved
            # (streams.faust_adapter.commit_before_revoke), so nothing is answered twice.
            assert result.duplicated == 0, f"{result.duplicated} requests answered twice in a graceful rebalance"
            assert set(result.statuses) == {"ok"}, result.statuses
            assert by_worker.get("worker-c", 0) > 0, "the new replica answered nothing"
    finally:
        for w in (a, b, c):
            if w.proc is not None:
                w.kill()


def response_records(bootstrap: str, topic: str, partitions: int, timeout_s: float = 30.0) -> Counter[str]:
    """Every record on the response topic, counted by key (the request_id)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False})
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    keys: Counter[str] = Counter()
    read = dict.fromkeys(ends, 0)
    deadline = time.monotonic() + timeout_s
    while any(read[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            keys[msg.key().decode()] += 1
            read[msg.partition()] = msg.offset() + 1
    consumer.close()
    return keys


@pytest.mark.timeout(300)
def test_lost_produce_acknowledgements_are_retried_without_writing_an_answer_twice(tmp_path):
    """For ~6 s every produce request of the worker reaches the broker, is written, and its
    acknowledgement is cut off on the way back (a proxy closes the connection): the worker's
    idempotent producer retries the same batches, and the broker, seeing their sequence
    numbers again, does not write them twice. Afterwards every request has exactly one
    record on the response topic."""
    tag = uuid.uuid4().hex[:8]
    with RestartableBroker(state_dir=tmp_path / "kafka") as broker:
        cutter = AckCutter(upstream_port=0)
        broker.stop()
        cutter.upstream_port = broker.add_listener("PROXIED", advertised_port=cutter.port)
        broker.start()
        with cutter:
            # the worker talks to Kafka only through the proxy; the test's client directly
            worker = WorkerProcess(worker_env(f"127.0.0.1:{cutter.port}", tag), tmp_path / "w.log",
                                   "worker-p").start()
            try:
                worker.wait_ready()
                with RerankClient(broker.bootstrap, f"req-{tag}", [f"resp-{tag}"]) as client:
                    load = SteadyLoad(client, short_requests(14), RATE).start()
                    assert load.wait_answers(15, 90)
                    cutter.armed.set()
                    blocked_at = time.monotonic()
                    time.sleep(6)
                    cutter.armed.clear()
                    released_at = time.monotonic()
                    assert load.wait_answers(client.answered() + 20, 90), "no progress after the acks came back"
                    ids = load.stop()
                    client.wait(ids, 120)
                    result = tally(client, ids)
                    during = [a for i in ids for a in client.answers(i) if blocked_at + 1 < a.received_at < released_at]
                    records = response_records(broker.bootstrap, f"resp-{tag}", 2)
                    twice = {k: n for k, n in records.items() if n > 1}
                    print(f"\nproduce acks cut for 6 s: {result.line()}; produce requests cut: {cutter.cuts}; "
                          f"answers delivered while cutting: {len(during)}; response records {sum(records.values())} "
                          f"for {len(records)} request ids; written twice: {len(twice)}")
                    assert cutter.cuts >= 3, "the proxy cut no produce request: the fault was not exercised"
                    assert result.lost == 0, result.lost_ids
                    assert set(result.statuses) == {"ok"}, result.statuses
                    assert not twice, f"answers written more than once: {twice}"
                    assert result.duplicated == 0
                    assert set(records) >= set(ids)
                assert worker.proc.poll() is None, "the worker stopped:\n" + worker.tail()
            finally:
                code = worker.stop()
                print(worker.tail(8))
            assert code == 0


@pytest.mark.timeout(240)
def test_an_answer_the_response_topic_cannot_take_is_replaced_by_an_error_answer(kafka_bootstrap, tmp_path):
    """Non-retriable: the response topic's max.message.bytes is smaller than some answers
    (documents returned in full). Retrying cannot help, and stopping would only hand the
    same request to the next replica (a crash loop): such a request gets one too_large
    error answer, and everything else goes on being answered."""
    tag = uuid.uuid4().hex[:8]
    worker = WorkerProcess(worker_env(kafka_bootstrap, tag), tmp_path / "w.log", "worker-s").start()
    try:
        worker.wait_ready()
        set_topic_config(kafka_bootstrap, f"resp-{tag}", "max.message.bytes", "20000")
        big_doc = "Returned in full, this document makes the answer larger than the topic allows. " * 20
        with RerankClient(kafka_bootstrap, f"req-{tag}", [f"resp-{tag}"]) as client:
            load = SteadyLoad(client, short_requests(15), RATE).start()
            assert load.wait_answers(10, 90)
            big = []
            for i in range(5):
                big.append(client.send({"request_id": f"big-{tag}-{i}", "query": "size",
                                        "documents": [f"{j} {big_doc}" for j in range(20)],
                                        "return_documents": True}))
                time.sleep(0.5)
            assert load.wait_answers(client.answered() + 20, 90), "no progress after the oversized answers"
            ids = load.stop()
            client.wait([*ids, *big], 120)
            steady, oversized = tally(client, ids), tally(client, big)
            print(f"\nresponse topic max.message.bytes 20000: steady load {steady.line()}; "
                  f"oversized answers {oversized.line()}")
            assert steady.lost == 0 and oversized.lost == 0, (steady.lost_ids, oversized.lost_ids)
            assert steady.statuses == {"ok": steady.sent}
            assert oversized.statuses == {"too_large": len(big)} and oversized.duplicated == 0
            message = client.answers(big[0])[0].response["error"]["message"]
            assert "max.message.bytes" in message and "return_documents" in message, message
        assert worker.proc.poll() is None, "the worker stopped:\n" + worker.tail()
    finally:
        code = worker.stop()
        print(worker.tail(8))
    assert code == 0
