"""Broker faults on a real three-node cluster under load, with two workers: the node leading
most request partitions SIGKILLed then restarted (at least once and exactly once), another
node stopped with SIGTERM (a controlled shutdown) then restarted, and a rolling restart of all
three. Each test reports what was sent, answered, duplicated and lost per request_id, the
errors by code, the longest stretch without any answer, and p99 before, during and after the
fault; lost must be 0 and both workers must live through it. ``make test-faults`` runs them.

The topics the workers create get 3 copies and min.insync.replicas 2 (``streams.topics``), so
one node's loss stops no partition. What bounds the gap after a SIGKILL is Kafka's
``broker.session.timeout.ms`` (9 s): until the controller fences the dead node, its
partitions have no leader and every acks=all write it was in the ISR of waits.
"""
from __future__ import annotations

import contextlib
import time
import uuid

import pytest

from loadgen.client import RerankClient
from loadgen.cluster.faults import Failover, SteadyLoad, Tally, failover, short_requests, tally
from loadgen.cluster.multi_broker import ClusterNodes, local_cluster
from loadgen.cluster.workers import WorkerProcess
from tests.streams.test_faults import RATE, wait_split, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

#: Kafka's broker.session.timeout.ms (the cluster runs with Kafka's defaults).
BROKER_SESSION_TIMEOUT_S = 9.0
#: The workers' session timeout: above what a dead node's fencing and the group coordinator's
#: move take together, so that no worker is taken for dead while the coordinator is away (at 6 s
#: one was, and answered again what it could no longer commit).
WORKER_SESSION_TIMEOUT_S = 20
#: What a SIGKILL may cost beyond it: the election, the clients' metadata refresh and retry
#: back-off, and 2 shared cores running 3 brokers, 2 workers and the load.
ELECTION_AND_RETRIES_S = 6.0


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(3) as nodes:
        yield nodes


@contextlib.contextmanager
def two_workers_under_load(cluster: ClusterNodes, tmp_path, delivery: str = "at_least_once"):
    """Two workers sharing the request partitions, a client, and a steady load that has answers."""
    tag = uuid.uuid4().hex[:8]
    env = worker_env(cluster.bootstrap, tag, RERANK_DELIVERY=delivery, RERANK_SESSION_TIMEOUT_S=str(WORKER_SESSION_TIMEOUT_S))
    workers = [WorkerProcess(env, tmp_path / f"{name}.log", f"worker-{name}").start() for name in ("a", "b")]
    try:
        for worker in workers:
            worker.wait_ready()
        wait_split(workers)
        with RerankClient(cluster.bootstrap, f"req-{tag}", [f"resp-{tag}"]) as client:
            load = SteadyLoad(client, short_requests(31), RATE).start()
            assert load.wait_answers(15, 90), "no steady state before the fault:\n" + workers[0].tail()
            yield workers, client, load, f"req-{tag}"
    finally:
        for worker in workers:
            worker.kill()


def settle(workers: list[WorkerProcess], client: RerankClient, load: SteadyLoad, fault_at: float,
           recovered_at: float, what: str) -> tuple[Tally, Failover]:
    """Answers after the fault, then the load stopped and every request counted and checked."""
    assert load.wait_answers(client.answered() + 15, 120), f"{what}: no answers after recovery"
    ids = load.stop()
    client.wait(ids, 150)
    result = tally(client, ids)
    figures = failover(client, ids, fault_at, recovered_at)
    print(f"\n{what}: {result.line()}; {figures.line()}")
    assert result.lost == 0, f"{what}: lost {result.lost_ids}"
    assert set(result.statuses) == {"ok"}, f"{what}: error answers {result.statuses}"
    for worker in workers:
        assert worker.proc.poll() is None, f"{what}: {worker.name} died:\n{worker.tail()}"
    return result, figures


@pytest.mark.timeout(420)
@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_sigkill_of_the_node_leading_most_request_partitions_then_its_restart(cluster, tmp_path, delivery):
    with two_workers_under_load(cluster, tmp_path, delivery) as (workers, client, load, topic):
        victim = cluster.busiest_leader(topic)
        fault_at = time.monotonic()
        cluster.kill(victim)
        assert load.wait_answers(client.answered() + 15, 120), "nothing answered while the node was down"
        cluster.restart(victim)
        cluster.wait_in_isr(topic, victim)
        result, figures = settle(workers, client, load, fault_at, time.monotonic(),
                                 f"SIGKILL of node {victim} (leader of most of {topic}), {delivery}")
    if delivery == "exactly_once":
        assert result.duplicated == 0, "a read_committed client saw an answer twice"
    assert figures.longest_gap_s < BROKER_SESSION_TIMEOUT_S + ELECTION_AND_RETRIES_S


@pytest.mark.timeout(420)
def test_controlled_shutdown_of_another_node_then_its_restart(cluster, tmp_path):
    with two_workers_under_load(cluster, tmp_path) as (workers, client, load, topic):
        busiest = cluster.busiest_leader(topic)
        leading = {leader for leader in cluster.leaders(topic).values() if leader >= 1}
        victim = min((leading - {busiest}) or (set(cluster.node_ids()) - {busiest}))
        fault_at = time.monotonic()
        took = cluster.stop(victim)  # SIGTERM: leadership moves away before the node goes
        assert load.wait_answers(client.answered() + 15, 120), "nothing answered while the node was down"
        cluster.restart(victim)
        cluster.wait_in_isr(topic, victim)
        result, figures = settle(workers, client, load, fault_at, time.monotonic(),
                                 f"SIGTERM of node {victim} ({took:.1f} s to stop)")
    assert result.duplicated == 0, "nothing should be answered twice when no worker dies"
    assert figures.longest_gap_s < BROKER_SESSION_TIMEOUT_S


@pytest.mark.timeout(600)
def test_rolling_restart_of_all_three_nodes(cluster, tmp_path):
    with two_workers_under_load(cluster, tmp_path) as (workers, client, load, topic):
        fault_at = time.monotonic()
        for node in cluster.node_ids():  # an upgrade: one node at a time, each back in sync first
            cluster.stop(node)
            cluster.restart(node)
            cluster.wait_in_isr(topic, node)
            assert load.wait_answers(client.answered() + 5, 120), f"no answers after node {node} came back"
        result, figures = settle(workers, client, load, fault_at, time.monotonic(), "rolling restart of nodes 1, 2, 3")
    assert result.duplicated == 0, "nothing should be answered twice when no worker dies"
    assert figures.longest_gap_s < BROKER_SESSION_TIMEOUT_S
