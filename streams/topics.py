"""Creating the worker's topics before it consumes (faust creates only its own)."""
from __future__ import annotations

import logging

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger("rerank.topics")


class KafkaUnavailable(SystemExit):
    """Start-up stops: the cluster cannot be reached or refuses us."""


def ensure_topics(client_config: dict[str, str], topics: dict[str, int], replication_factor: int = 1,
                  timeout_s: float = 30.0) -> None:
    """Creates each missing topic with its partition count; existing ones are left as they are
    (a smaller partition count than asked for is logged, never changed)."""
    admin = AdminClient({**client_config, "logger": _quiet()})
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"worker: cannot reach Kafka at {client_config['bootstrap.servers']} "
            f"(KAFKA_BOOTSTRAP_SERVERS; security {client_config.get('security.protocol', 'PLAINTEXT')}): "
            f"{exc.args[0].str() if exc.args and hasattr(exc.args[0], 'str') else exc}") from None
    missing = [NewTopic(name, num_partitions=n, replication_factor=replication_factor)
               for name, n in topics.items() if name not in existing]
    for name, n in topics.items():
        if name in existing and len(existing[name].partitions) < n:
            log.warning("topic %s has %d partitions (configured %d): at most %d replicas can share it",
                        name, len(existing[name].partitions), n, len(existing[name].partitions))
    if not missing:
        return
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s", name)
        except KafkaException as exc:
            err = exc.args[0]
            if getattr(err, "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                continue  # another replica won the race
            raise KafkaUnavailable(f"worker: could not create topic {name}: {err}") from None


def _quiet() -> logging.Logger:
    quiet = logging.getLogger("rerank.topics.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    return quiet
