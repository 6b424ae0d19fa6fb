"""The replication the worker's topics get: min(3, brokers) and min.insync.replicas RF - 1 unless
set (RERANK_REPLICATION_FACTOR, RERANK_MIN_INSYNC_REPLICAS), checked against a real single broker
here and against a real three-node cluster in tests/loadgen/test_cluster_multi_broker.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from streams.settings import SettingsError, load_settings
from streams.topics import KafkaUnavailable, Replication, ensure_topics, replication_for

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("brokers, expected", [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))])
def test_auto_replication_is_three_copies_at_most_and_survives_one_broker(brokers, expected):
    assert replication_for(brokers) == Replication(*expected, brokers)


def test_set_values_win_and_impossible_ones_are_refused_with_the_variable():
    assert replication_for(3, factor=2) == Replication(2, 1, 3)
    assert replication_for(3, min_insync=1) == Replication(3, 1, 3)
    assert replication_for(5, factor=5, min_insync=3) == Replication(5, 3, 5)
    with pytest.raises(KafkaUnavailable, match=r"RERANK_REPLICATION_FACTOR=3 but the cluster has 1 broker"):
        replication_for(1, factor=3)
    with pytest.raises(KafkaUnavailable, match=r"RERANK_MIN_INSYNC_REPLICAS=3 is more than the replication factor 2"):
        replication_for(2, min_insync=3)


def test_the_settings_default_to_auto_and_read_numbers(monkeypatch):
    settings = load_settings()
    assert (settings.replication_factor, settings.min_insync_replicas) == (None, None)
    monkeypatch.setenv("RERANK_REPLICATION_FACTOR", "auto")
    monkeypatch.setenv("RERANK_MIN_INSYNC_REPLICAS", "2")
    assert (load_settings().replication_factor, load_settings().min_insync_replicas) == (None, 2)
    monkeypatch.setenv("RERANK_REPLICATION_FACTOR", "3")
    assert load_settings().replication_factor == 3
    monkeypatch.setenv("RERANK_REPLICATION_FACTOR", "0")
    with pytest.raises(SettingsError, match="RERANK_REPLICATION_FACTOR"):
        load_settings()
    monkeypatch.setenv("RERANK_REPLICATION_FACTOR", "1")
    with pytest.raises(SettingsError, match="RERANK_MIN_INSYNC_REPLICAS=2 is more than RERANK_REPLICATION_FACTOR=1"):
        load_settings()


def topic_replication(bootstrap: str, topic: str) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) as the cluster has them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 15
    # a broker other than the controller may not know a just-created topic's partitions yet
    while not (partitions := admin.list_topics(topic, timeout=10).topics[topic].partitions):
        assert time.monotonic() < deadline, f"topic {topic} has no partitions in the metadata"
        time.sleep(0.2)
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return len(partitions[0].replicas), int(future.result(timeout=10)["min.insync.replicas"].value)


@pytest.mark.kafka
def test_init_topics_on_one_broker_uses_one_copy_and_says_so(kafka_bootstrap):
    tag = uuid.uuid4().hex[:8]
    topics = {"RERANK_REQUEST_TOPIC": f"rep-req-{tag}", "RERANK_RESPONSE_TOPIC": f"rep-resp-{tag}",
              "RERANK_DEAD_LETTER_TOPIC": f"rep-dlq-{tag}"}
    env = {**os.environ, **topics, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PYTHONPATH": str(REPO)}
    env.pop("RERANK_REPLICATION_FACTOR", None)
    env.pop("RERANK_MIN_INSYNC_REPLICAS", None)
    try:
        done = subprocess.run([sys.executable, "-m", "streams", "init-topics"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "replication factor 1 and min.insync.replicas 1 (1 broker(s))" in done.stdout, done.stdout
        for topic in topics.values():
            assert topic_replication(kafka_bootstrap, topic) == (1, 1)
        again = subprocess.run([sys.executable, "-m", "streams", "init-topics"], env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=120)
        assert "all existed already" in again.stdout, again.stdout
        assert "WARNING" not in again.stderr, "one broker: replication factor 1 is all there can be"
    finally:
        AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics(list(topics.values()))


@pytest.mark.kafka
def test_an_explicit_factor_above_the_brokers_stops_only_a_creation(kafka_bootstrap, new_topic):
    config = {"bootstrap.servers": kafka_bootstrap}
    with pytest.raises(KafkaUnavailable, match="RERANK_REPLICATION_FACTOR=3 but the cluster has 1 broker"):
        ensure_topics(config, {f"rep-missing-{uuid.uuid4().hex[:8]}": 1}, replication_factor=3)
    # every topic there already: a worker restarted while brokers are away still starts
    assert ensure_topics(config, {new_topic("rep"): 1}, replication_factor=3) is None
