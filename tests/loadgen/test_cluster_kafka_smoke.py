"""The broker under the tests is a real Kafka: a consumer group splits partitions and
every message is seen exactly once."""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer

pytestmark = pytest.mark.kafka


def test_two_consumers_in_one_group_split_four_partitions(kafka_bootstrap, new_topic):
    topic = new_topic("smoke", partitions=4)
    group = f"smoke-{uuid.uuid4().hex[:8]}"
    seen: dict[str, list[tuple[int, str]]] = {"a": [], "b": []}
    assigned: dict[str, set[int]] = {"a": set(), "b": set()}
    stop = threading.Event()
    lock = threading.Lock()

    def consume(name: str) -> None:
        consumer = Consumer({
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "session.timeout.ms": 10_000,
        })

        def on_assign(c, partitions):
            with lock:
                assigned[name].update(p.partition for p in partitions)

        consumer.subscribe([topic], on_assign=on_assign)
        try:
            while not stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                with lock:
                    seen[name].append((msg.partition(), msg.value().decode()))
        finally:
            consumer.close()

    threads = [threading.Thread(target=consume, args=(n,), daemon=True) for n in ("a", "b")]
    for t in threads:
        t.start()
    # Produce only once both members hold partitions, so the split is observable.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if assigned["a"] and assigned["b"] and len(assigned["a"] | assigned["b"]) == 4:
                break
        time.sleep(0.1)
    else:
        stop.set()
        pytest.fail(f"group never split the partitions: {assigned}")

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = [f"m{i}" for i in range(100)]
    for i, value in enumerate(sent):
        producer.produce(topic, value=value.encode(), partition=i % 4)
    assert producer.flush(30) == 0

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if len(seen["a"]) + len(seen["b"]) >= 100:
                break
        time.sleep(0.1)
    time.sleep(1)  # a late duplicate would show up here
    stop.set()
    for t in threads:
        t.join(10)

    counts = Counter(v for name in seen for _, v in seen[name])
    assert sorted(counts) == sorted(sent), "every message arrives"
    assert set(counts.values()) == {1}, "no message arrives twice"
    assert seen["a"] and seen["b"], "both consumers did work"
    parts_a = {p for p, _ in seen["a"]}
    parts_b = {p for p, _ in seen["b"]}
    assert not parts_a & parts_b, "the group split the partitions between its members"
    assert parts_a | parts_b == {0, 1, 2, 3}
