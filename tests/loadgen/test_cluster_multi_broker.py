"""A real three-node KRaft cluster (deploy/kafka/kafka.sh with KAFKA_BROKERS=3), one for the module:
the leader of a partition is SIGKILLed under acks=all writes, another node takes over, nothing
written is lost, and the killed node comes back into the ISR; a SIGTERMed node hands its
leadership over at once; the worker's topics get 3 copies and min.insync.replicas 2, and an
existing topic that one broker's loss would hurt is warned about; a real worker answers every
request through a SIGKILL of the node leading most of its partitions, and its log stays free of
faust's leader-topic errors. Teardown leaves no JVM behind."""
from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from loadgen.client import RerankClient
from loadgen.cluster.faults import SteadyLoad, short_requests, tally
from loadgen.cluster.local_kafka import KAFKA_SH
from loadgen.cluster.multi_broker import ClusterNodes, local_cluster
from loadgen.cluster.workers import WorkerProcess
from streams.topics import Replication, ensure_topics
from tests.streams.test_faults import RATE, wait_split, worker_env
from tests.streams.test_topic_replication import topic_replication

# The tests on the cluster (marked faults) share one, as a start takes 15-30 s on 2 shared cores,
# and take ~2 min together: `make test-faults`. The ones that start no JVM run in `make test`.

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


@pytest.fixture(scope="module")
def cluster():
    started = time.monotonic()
    # Kafka's own default, set: the failover variables reach every node's server.properties
    with local_cluster(3, broker_settings={"KAFKA_REPLICA_LAG_TIME_MAX_MS": "30000"}) as nodes:
        for node in nodes.node_ids():
            assert "replica.lag.time.max.ms=30000" in (nodes.state / f"node-{node}" / "server.properties").read_text()
        print(f"\n3 nodes up in {time.monotonic() - started:.1f} s: {nodes.bootstrap}")
        yield nodes
        state = str(nodes.state)
    assert java_pids_under(state) == [], "a node outlived the cluster's teardown"
    assert not nodes.state.exists(), "the data is removed"


def new_topic(cluster: ClusterNodes, **config: str) -> str:
    topic = f"mb-{uuid.uuid4().hex[:8]}"
    cluster.admin().create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3,
                                            config=config)])[topic].result(timeout=30)
    cluster.wait_in_isr(topic, 1)  # every replica in sync before anything happens to a node
    return topic


@pytest.mark.kafka
@pytest.mark.faults
def test_a_killed_leader_is_replaced_and_rejoins_the_isr(cluster) -> None:
    assert len(cluster.admin().list_topics(timeout=10).brokers) == 3
    topic = new_topic(cluster, **{"min.insync.replicas": "2"})
    before = [f"before-{i}" for i in range(60)]
    produce(cluster.bootstrap, topic, before)

    victim = cluster.leaders(topic)[0]
    killed_at = time.monotonic()
    cluster.kill(victim)
    new_leader = cluster.wait_new_leader(topic, 0, victim)
    elected_s = time.monotonic() - killed_at
    # acks=all writes right after the failover: with 2 of 3 in sync, min ISR 2 holds
    during = [f"during-{i}" for i in range(60)]
    produce(cluster.bootstrap, topic, during)
    print(f"node {victim} SIGKILLed: partition 0 led by node {new_leader} after {elected_s:.1f} s; "
          f"60 acks=all writes acknowledged {time.monotonic() - killed_at - elected_s:.1f} s later")
    assert victim not in cluster.leaders(topic).values()
    assert all(victim not in isr for isr in cluster.in_sync(topic).values()), cluster.in_sync(topic)
    seen = consume_all(cluster.bootstrap, topic, len(before) + len(during))
    assert sorted(seen) == sorted(before + during), "every acknowledged record is there, once"

    restart_s = cluster.restart(victim)
    isr_s = cluster.wait_in_isr(topic, victim)
    print(f"node {victim} restarted in {restart_s:.1f} s, back in every ISR {isr_s:.1f} s later")
    produce(cluster.bootstrap, topic, [f"after-{i}" for i in range(30)])
    assert len(consume_all(cluster.bootstrap, topic, 150)) == 150


def test_nodes_are_named_by_their_ids_only() -> None:
    cluster = ClusterNodes(3)
    with pytest.raises(ValueError, match=r"1\.\.3"):
        cluster.kill(4)
    with pytest.raises(ValueError, match="at least one node"):
        ClusterNodes(0)
    with pytest.raises(RuntimeError, match="not running"):
        cluster.stop(2)
    cluster.down()  # nothing started: nothing to stop


@pytest.mark.parametrize("env, args, says", [
    ({"KAFKA_BROKERS": "three"}, ["up"], "KAFKA_BROKERS must be a whole number of nodes"),
    ({"KAFKA_BROKERS": "3", "KAFKA_PORTS": "19601,19602"}, ["up"], "KAFKA_PORTS names 2 ports for KAFKA_BROKERS=3"),
    ({"KAFKA_BROKERS": "3", "KAFKA_SECURITY": "sasl_ssl"}, ["up"], "plaintext only"),
    ({}, ["node-start", "2"], "no node 2 in"),
    ({}, ["node-stop", "x"], "usage:"),
])
def test_kafka_sh_refuses_a_cluster_it_cannot_start_with_a_reason(tmp_path, env, args, says) -> None:
    done = subprocess.run(["bash", str(KAFKA_SH), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KAFKA_STATE_DIR": str(tmp_path / "state"), **env})
    assert done.returncode != 0 and says in done.stderr, done.stderr


@pytest.mark.kafka
@pytest.mark.faults
def test_stop_is_a_controlled_shutdown_that_moves_leadership_at_once(cluster) -> None:
    topic = new_topic(cluster)
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


@pytest.mark.kafka
@pytest.mark.faults
def test_worker_topics_get_three_copies_and_fragile_ones_are_warned_about(cluster, caplog) -> None:
    config = {"bootstrap.servers": cluster.bootstrap}
    created = f"mb-auto-{uuid.uuid4().hex[:8]}"
    assert ensure_topics(config, {created: 2}) == Replication(3, 2, 3)
    assert topic_replication(cluster.bootstrap, created) == (3, 2)

    single = f"mb-rf1-{uuid.uuid4().hex[:8]}"
    cluster.admin().create_topics([NewTopic(single, 1, replication_factor=1)])[single].result(timeout=30)
    lax = new_topic(cluster, **{"min.insync.replicas": "1"})
    with caplog.at_level(logging.WARNING, logger="rerank.topics"):
        assert ensure_topics(config, {created: 2, single: 1, lax: PARTITIONS}) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert any(single in w and "replication factor 1 on a 3-broker cluster" in w for w in warnings), warnings
    assert any(lax in w and "min.insync.replicas=1" in w and "min.insync.replicas=2" in w for w in warnings), warnings


@pytest.mark.kafka
@pytest.mark.faults
@pytest.mark.timeout(300)
def test_a_worker_answers_every_request_through_a_leader_kill_with_a_clean_log(cluster, tmp_path) -> None:
    tag = uuid.uuid4().hex[:8]
    request_topic = f"req-{tag}"
    worker = WorkerProcess(worker_env(cluster.bootstrap, tag), tmp_path / "worker.log", "worker-mb").start()
    try:
        worker.wait_ready()
        wait_split([worker])
        assert topic_replication(cluster.bootstrap, request_topic) == (3, 2), "auto: 3 copies, min ISR 2"
        with RerankClient(cluster.bootstrap, request_topic, [f"resp-{tag}"]) as client:
            load = SteadyLoad(client, short_requests(25), RATE).start()
            assert load.wait_answers(15, 90), "no steady state before the fault:\n" + worker.tail()
            victim = cluster.busiest_leader(request_topic)
            led = [p for p, leader in cluster.leaders(request_topic).items() if leader == victim]
            killed_at = time.monotonic()
            cluster.kill(victim)
            for partition in led:
                cluster.wait_new_leader(request_topic, partition, victim)
            elected_s = time.monotonic() - killed_at
            answered = client.answered()
            assert load.wait_answers(answered + 20, 120), "nothing answered after the kill:\n" + worker.tail()
            cluster.restart(victim)
            cluster.wait_in_isr(request_topic, victim)
            ids = load.stop()
            client.wait(ids, 150)
            result = tally(client, ids)
        print(f"\nworker through a SIGKILL of node {victim} (leaders moved after {elected_s:.1f} s): {result.line()}")
        assert result.lost == 0, f"lost through a leader kill: {result.lost_ids}"
        assert worker.proc.poll() is None, "the worker died:\n" + worker.tail()
    finally:
        code = worker.stop()
    log = worker.log_path.read_text(errors="replace")
    noisy = [line for line in log.splitlines() if "[ERROR]" in line or "[WARNING]" in line]  # faust's format
    print(f"{len(noisy)} warning/error lines in the worker's log:\n" + "\n".join(noisy[:25]))
    assert "__assignor-__leader" not in log and "not found in cluster metadata" not in log
    assert code == 0, f"worker exit code {code} on SIGTERM"
