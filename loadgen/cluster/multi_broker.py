"""A local multi-node Kafka cluster for failover tests: ``deploy/kafka/kafka.sh`` with
``KAFKA_BROKERS=N`` starts N combined broker+controller nodes (an N-voter KRaft quorum) on
127.0.0.1, and this handle kills, stops and restarts single nodes of it and says who leads
which partition.

``kafka.sh`` is the one source of the node command line: a restart is ``kafka.sh node-start
ID`` on the node's kept data; only SIGKILL is sent from here (to the pid kafka.sh wrote).

    with local_cluster(3) as cluster:
        leader = cluster.leaders(topic)[0]
        cluster.kill(leader)           # SIGKILL: fenced after broker.session.timeout.ms
        cluster.restart(leader)        # same node id, port and data
        cluster.wait_in_isr(topic, leader)
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka.admin import AdminClient

from loadgen.cluster.local_kafka import KAFKA_SH, free_port


class ClusterNodes:
    """A KAFKA_BROKERS=N cluster of its own (ports and state folder), node ids 1..N.

    ``broker_settings`` are kafka.sh's failover variables, e.g.
    ``{"KAFKA_BROKER_SESSION_TIMEOUT_MS": "6000"}`` (Kafka's defaults otherwise).
    """

    def __init__(self, brokers: int = 3, state_dir: Path | None = None,
                 broker_settings: dict[str, str] | None = None) -> None:
        if brokers < 1:
            raise ValueError(f"a cluster has at least one node (got brokers={brokers})")
        self.brokers = brokers
        self.ports = _distinct_free_ports(brokers)
        self.state = Path(state_dir or tempfile.mkdtemp(prefix=f"kafka-cluster-{self.ports[0]}-"))
        self.env = {**os.environ, **(broker_settings or {}), "KAFKA_BROKERS": str(brokers),
                    "KAFKA_PORTS": ",".join(map(str, self.ports)), "KAFKA_STATE_DIR": str(self.state)}
        self.env.pop("KAFKA_SECURITY", None)  # a cluster is plaintext
        self.bootstrap = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        self._admin: AdminClient | None = None

    # --- the whole cluster ------------------------------------------------------------
    def up(self) -> str:
        """Starts every node (fresh storage); returns the bootstrap list once each node
        answers metadata and counts N brokers."""
        self._kafka_sh("up")
        return self.bootstrap

    def down(self) -> None:
        """Stops every node still running (SIGTERM, then SIGKILL after 60 s) and removes the data."""
        self._kafka_sh("down", check=False)

    def __enter__(self) -> "ClusterNodes":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # --- one node ---------------------------------------------------------------------
    def node_ids(self) -> list[int]:
        return list(range(1, self.brokers + 1))

    def port(self, node_id: int) -> int:
        self._check(node_id)
        return self.ports[node_id - 1]

    def pid(self, node_id: int) -> int | None:
        """The node's JVM, or None when it is not running."""
        self._check(node_id)
        try:
            pid = int((self.state / f"node-{node_id}" / "kafka.pid").read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def kill(self, node_id: int, timeout_s: float = 10.0) -> None:
        """SIGKILL: no controlled shutdown, its partitions keep it as leader until the
        controller fences it (broker.session.timeout.ms)."""
        pid = self.pid(node_id)
        if pid is None:
            raise RuntimeError(f"node {node_id} is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while _running(pid):  # a zombie of no one of ours: kill -0 fails once it is gone
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node_id} (pid {pid}) still there {timeout_s}s after SIGKILL")
            time.sleep(0.05)

    def stop(self, node_id: int) -> float:
        """SIGTERM (controlled shutdown: leadership moves away first) and wait for the exit;
        the data stays. Returns the seconds it took."""
        if self.pid(node_id) is None:
            raise RuntimeError(f"node {node_id} is not running")
        started = time.monotonic()
        self._kafka_sh("node-stop", str(node_id))
        return time.monotonic() - started

    def restart(self, node_id: int) -> float:
        """Starts a stopped or killed node again on its own data (same id, port, cluster id)
        and waits until it answers metadata and the cluster counts N brokers again. Returns
        the seconds it took; ``wait_in_isr`` waits for its replicas to catch up."""
        if self.pid(node_id) is not None:
            raise RuntimeError(f"node {node_id} is still running")
        started = time.monotonic()
        self._kafka_sh("node-start", str(node_id))
        return time.monotonic() - started

    # --- who leads what ---------------------------------------------------------------
    def partitions(self, topic: str, timeout_s: float = 10.0) -> dict:
        """The topic's partitions as the cluster's metadata has them (librdkafka's
        PartitionMetadata: ``leader``, ``replicas``, ``isrs``)."""
        metadata = self.admin().list_topics(topic, timeout=timeout_s)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise RuntimeError(f"topic {topic}: {found.error if found else 'not in the metadata'}")
        return found.partitions

    def leaders(self, topic: str) -> dict[int, int]:
        """{partition: node id of its leader}; -1 where the partition has none now."""
        return {p: meta.leader for p, meta in sorted(self.partitions(topic).items())}

    def in_sync(self, topic: str) -> dict[int, list[int]]:
        """{partition: node ids of its in-sync replicas}."""
        return {p: sorted(meta.isrs) for p, meta in sorted(self.partitions(topic).items())}

    def busiest_leader(self, topic: str) -> int:
        """The node that leads most of the topic's partitions (the lowest id on a tie)."""
        counts = Counter(leader for leader in self.leaders(topic).values() if leader >= 0)
        if not counts:
            raise RuntimeError(f"no partition of {topic} has a leader")
        return min(counts, key=lambda node: (-counts[node], node))

    def wait_new_leader(self, topic: str, partition: int, old_leader: int, timeout_s: float = 60.0) -> int:
        """Waits until ``partition`` is led by a live node other than ``old_leader``; returns it."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):  # a metadata request can fail while nodes move
                leader = self.leaders(topic).get(partition, -1)
                if leader >= 1 and leader != old_leader:
                    return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}[{partition}] still has no leader but {old_leader} after {timeout_s}s")
            time.sleep(0.1)

    def wait_in_isr(self, topic: str, node_id: int, timeout_s: float = 60.0) -> float:
        """Waits until ``node_id`` is in the ISR of every partition it is a replica of;
        returns the seconds it took."""
        started = time.monotonic()
        while True:
            with contextlib.suppress(Exception):
                partitions = self.partitions(topic)
                if all(node_id in meta.isrs for meta in partitions.values() if node_id in meta.replicas):
                    return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"node {node_id} not back in the ISR of {topic}: {self.in_sync(topic)}")
            time.sleep(0.2)

    def admin(self) -> AdminClient:
        if self._admin is None:
            # A dead node refuses connections for as long as it is down: librdkafka says so
            # once a second, and that is the point of the test, not news.
            quiet = logging.getLogger("kafka-cluster.librdkafka")
            quiet.setLevel(logging.CRITICAL)
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": quiet})
        return self._admin

    # --- internals --------------------------------------------------------------------
    def _check(self, node_id: int) -> None:
        if node_id not in self.node_ids():
            raise ValueError(f"node ids of this cluster are 1..{self.brokers} (got {node_id!r})")

    def _kafka_sh(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["bash", str(KAFKA_SH), *args], env=self.env, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"kafka.sh {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr}")
        return done.stdout


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # setsid'd by kafka.sh, so not our child: init reaps it; until then /proc says Z
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return False


@contextlib.contextmanager
def local_cluster(brokers: int = 3, broker_settings: dict[str, str] | None = None) -> Iterator[ClusterNodes]:
    """Starts an N-node cluster on free ports and stops every node (data removed) on exit."""
    with ClusterNodes(brokers, broker_settings=broker_settings) as cluster:
        yield cluster
