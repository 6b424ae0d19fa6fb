"""Finding a Kafka cluster for the demo, the tests and the load tests.

Order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a reachable Docker engine runs
testcontainers' Kafka; else the local Apache Kafka from ``deploy/kafka`` starts on a
free port and stops (data removed) when the context exits.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
KAFKA_IMAGE = "apache/kafka:4.1.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker_reachable() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def local_broker(port: int | None = None) -> Iterator[str]:
    """Starts the Maven-resolved Apache Kafka on 127.0.0.1 and yields its bootstrap address."""
    env = dict(os.environ, KAFKA_PORT=str(port or free_port()))
    up = subprocess.run(["bash", str(KAFKA_SH), "up"], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        raise RuntimeError(f"local Kafka did not start:\n{up.stderr}")
    bootstrap = up.stdout.strip().splitlines()[-1]
    try:
        yield bootstrap
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "down"], env=env, capture_output=True, text=True)


@contextlib.contextmanager
def kafka_cluster() -> Iterator[tuple[str, str]]:
    """Yields (bootstrap servers, where they came from) for the first cluster available."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured, "KAFKA_BOOTSTRAP_SERVERS"
        return
    if docker_reachable():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield container.get_bootstrap_server(), f"testcontainers ({KAFKA_IMAGE})"
        return
    with local_broker() as bootstrap:
        yield bootstrap, "local Apache Kafka (deploy/kafka)"
