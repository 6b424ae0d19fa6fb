"""A real three-node KRaft cluster (deploy/kafka/kafka.sh with KAFKA_BROKERS=3): the leader of a
partition is SIGKILLed under acks=all writes, another node takes over, nothing written is lost,
and the killed node comes back into the ISR; teardown leaves no JVM behind."""
from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from loadgen.cluster.multi_broker import ClusterNodes, local_cluster

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

PARTITIONS = 3


def produce(bootstrap: str, topic: str, values: list[str], timeout_s: float = 60.0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5})
    failed = []
    for i, value in enumerate(values):
        producer.produce(topic, value=value.encode(), partition=i % PARTITIONS,
                         on_delivery=lambda err, msg: err and failed.append(err))
        producer.poll(0)
    assert producer.flush(timeout_s) == 0, "records still unacknowledged"
    assert not failed, failed


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[str]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"mb-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                seen.append(msg.value().decode())
    finally:
        consumer.close()
    return seen


def java_pids_under(state: str) -> list[str]:
    """JVMs whose command line names this cluster's state folder."""
    found = subprocess.run(["pgrep", "-f", f"kafka.Kafka {state}/"], capture_output=True, text=True)
    return found.stdout.split()


def test_a_killed_leader_is_replaced_and_rejoins_the_isr() -> None:
    started = time.monotonic()
    with local_cluster(3) as cluster:
        print(f"\n3 nodes up in {time.monotonic() - started:.1f} s: {cluster.bootstrap}")
        state = str(cluster.state)
        assert len(cluster.admin().list_topics(timeout=10).brokers) == 3
        topic = f"mb-{uuid.uuid4().hex[:8]}"
        created = cluster.admin().create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3,
                                                          config={"min.insync.replicas": "2"})])
        created[topic].result(timeout=30)
        cluster.wait_in_isr(topic, 1)  # every replica in sync before the kill
        before = [f"before-{i}" for i in range(60)]
        produce(cluster.bootstrap, topic, before)

        victim = cluster.leaders(topic)[0]
        assert cluster.busiest_leader(topic) in cluster.node_ids()
        killed_at = time.monotonic()
        cluster.kill(victim)
        # acks=all writes during the failover: they wait for the new leader, none is lost
        during = [f"during-{i}" for i in range(60)]
        produce(cluster.bootstrap, topic, during)
        new_leader = cluster.wait_new_leader(topic, 0, victim)
        elected_s = time.monotonic() - killed_at
        print(f"node {victim} SIGKILLed: partition 0 led by node {new_leader} after {elected_s:.1f} s")
        assert new_leader != victim and victim not in cluster.leaders(topic).values()
        assert all(victim not in isr for isr in cluster.in_sync(topic).values()), cluster.in_sync(topic)

        seen = consume_all(cluster.bootstrap, topic, len(before) + len(during))
        assert sorted(seen) == sorted(before + during), "every acknowledged record is there, once"

        restart_s = cluster.restart(victim)
        isr_s = cluster.wait_in_isr(topic, victim)
        print(f"node {victim} restarted in {restart_s:.1f} s, back in every ISR {isr_s:.1f} s later")
        after = [f"after-{i}" for i in range(30)]
        produce(cluster.bootstrap, topic, after)
        assert len(consume_all(cluster.bootstrap, topic, 150)) == 150
    assert java_pids_under(state) == [], "a node outlived the cluster's teardown"
    assert not cluster.state.exists(), "the data is removed"
    print(f"whole test {time.monotonic() - started:.1f} s")


def test_nodes_are_named_by_their_ids_only() -> None:
    cluster = ClusterNodes(3)
    with pytest.raises(ValueError, match=r"1\.\.3"):
        cluster.kill(4)
    with pytest.raises(ValueError, match="at least one node"):
        ClusterNodes(0)
    with pytest.raises(RuntimeError, match="not running"):
        cluster.stop(2)
    cluster.down()  # nothing started: nothing to stop


def test_stop_is_a_controlled_shutdown_that_moves_leadership_at_once() -> None:
    with local_cluster(3) as cluster:
        topic = f"mb-{uuid.uuid4().hex[:8]}"
        cluster.admin().create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3)])[topic] \
            .result(timeout=30)
        cluster.wait_in_isr(topic, 1)
        busiest = cluster.busiest_leader(topic)
        took = cluster.stop(busiest)
        print(f"\nnode {busiest} stopped (SIGTERM) in {took:.1f} s")
        assert cluster.pid(busiest) is None
        assert busiest not in cluster.leaders(topic).values(), cluster.leaders(topic)
        with pytest.raises(RuntimeError, match="still running"):
            cluster.restart(next(n for n in cluster.node_ids() if n != busiest))
        cluster.restart(busiest)
        cluster.wait_in_isr(topic, busiest)
        with pytest.raises(RuntimeError, match="no-such-topic"):
            cluster.partitions("no-such-topic-" + uuid.uuid4().hex[:6])
