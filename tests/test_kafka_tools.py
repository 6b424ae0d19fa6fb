"""Apache Kafka's own command-line tools run from the jars the project resolves: `make topics`
and `make lag` (kafka-topics and kafka-consumer-groups), and `deploy/kafka/kafka.sh tool` for
the console producer and consumer, against the real broker."""
from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from loadgen.cluster.local_kafka import free_port


REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], bootstrap: str, stdin: str | None = None, **env: str) -> str:
    done = subprocess.run(args, cwd=REPO, input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, **env})
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.kafka
def test_make_topics_and_make_lag_show_a_topic_and_a_group_with_its_lag(kafka_bootstrap, new_topic) -> None:
    topic = new_topic("tools", partitions=2)
    group = f"tools-group-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(5):
        producer.produce(topic, key=b"k", value=f"m{i}".encode())  # one key: one partition
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    taken = []
    while len(taken) < 2:
        msg = consumer.poll(10)
        assert msg is not None, "nothing consumed"
        assert not msg.error(), msg.error()
        taken.append(msg)
    consumer.commit(message=taken[-1], asynchronous=False)  # 2 of 5 read: lag 3
    consumer.close()

    topics = run(["make", "-s", "topics"], kafka_bootstrap)
    assert re.search(rf"^Topic: {re.escape(topic)}\s.*PartitionCount: 2\b", topics, re.M), topics
    assert "__consumer_offsets" not in topics

    lag = run(["make", "-s", "lag", f"RERANK_GROUP_ID={group}"], kafka_bootstrap)
    header, *rows = [line.split() for line in lag.splitlines() if line.strip() and not line.startswith("Consumer group")]
    assert header[:6] == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"], lag
    mine = [dict(zip(header, row)) for row in rows if row[:2] == [group, topic]]
    assert len(mine) == 1, lag  # only the partition the group read from has a committed offset
    assert (mine[0]["CURRENT-OFFSET"], mine[0]["LOG-END-OFFSET"], mine[0]["LAG"]) == ("2", "5", "3"), lag


@pytest.mark.kafka
def test_console_producer_and_consumer_run_from_the_same_jars(kafka_bootstrap, new_topic) -> None:
    topic = new_topic("console")
    tool = ["bash", "deploy/kafka/kafka.sh", "tool"]
    run([*tool, "kafka-console-producer", "--topic", topic, "--property", "parse.key=true",
         "--property", "key.separator=|"], kafka_bootstrap, stdin="r1|hello\nr2|world\n")
    read = run([*tool, "kafka-console-consumer", "--topic", topic, "--from-beginning", "--max-messages", "2",
                "--timeout-ms", "60000", "--property", "print.key=true"], kafka_bootstrap)
    assert read.splitlines() == ["r1\thello", "r2\tworld"]


def test_an_unknown_tool_is_refused_with_the_list() -> None:
    done = subprocess.run(["bash", "deploy/kafka/kafka.sh", "tool", "kafka-nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "kafka-consumer-groups" in done.stderr


def test_no_local_broker_is_said_at_once() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    done = subprocess.run(["make", "-s", "lag", f"KAFKA_PORT={free_port()}"], cwd=REPO, capture_output=True,
                          text=True, timeout=30, env=env)
    assert done.returncode != 0
    assert "no broker listens on 127.0.0.1:" in done.stderr
