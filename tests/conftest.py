"""Shared fixtures: one real Kafka cluster per test session, unique topics per test."""
from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from loadgen.cluster.local_kafka import kafka_cluster


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of a real broker: KAFKA_BOOTSTRAP_SERVERS, testcontainers, or local Kafka."""
    with kafka_cluster() as (bootstrap, source):
        print(f"\nkafka: {bootstrap} from {source}")
        yield bootstrap


@pytest.fixture
def new_topic(kafka_bootstrap):
    """Factory creating uniquely named topics for one test; deletes them afterwards."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        for f in admin.delete_topics(created).values():
            try:
                f.result(timeout=30)
            except Exception:
                pass
