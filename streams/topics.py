"""Creating the worker's topics before it consumes (faust creates only its own)."""
from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger("rerank.topics")


class KafkaUnavailable(SystemExit):
    """Start-up stops: the cluster cannot be reached or refuses us."""


def ensure_topics(client_config: dict[str, str], topics: dict[str, int], replication_factor: int = 1,
                  timeout_s: float = 30.0) -> None:
    """Creates each missing topic with its partition count; existing ones are left as they are
    (a smaller partition count than asked for is logged, never changed)."""
    errors: list[KafkaError] = []
    admin = AdminClient({**client_config, "logger": _quiet(), "error_cb": errors.append})
    existing = _list_topics(admin, client_config, errors, timeout_s)
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


# librdkafka retries a refused login or a failed TLS handshake for ever, and metadata
# requests then only time out ("broker transport failure"), so a wrong password used to
# cost the whole start-up timeout and end with a message that did not name the cause.
# These errors, reported through error_cb, are not going to heal: stop at the first one.
_FATAL_AT_STARTUP = {
    KafkaError._AUTHENTICATION: "Kafka refused the credentials (KAFKA_SASL_USERNAME={user}, "
                                "KAFKA_SASL_MECHANISM={mechanism}, password from KAFKA_SASL_PASSWORD or _FILE)",
    KafkaError._SSL: "the TLS handshake failed (KAFKA_SSL_CA_FILE={ca})",
}


def _list_topics(admin: AdminClient, client_config: dict[str, str], errors: list[KafkaError],
                 timeout_s: float) -> dict:
    """list_topics, polled in short steps so that a fatal connection error stops it at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic()))).topics
        except KafkaException as exc:
            last = exc
        admin.poll(0)  # serves error_cb
        for err in errors:
            if err.code() in _FATAL_AT_STARTUP:
                cause = _FATAL_AT_STARTUP[err.code()].format(
                    user=client_config.get("sasl.username", "-"), mechanism=client_config.get("sasl.mechanism", "-"),
                    ca=client_config.get("ssl.ca.location", "not set: system CAs"))
                # err.str() is librdkafka's own one-line text; it never holds the password
                raise KafkaUnavailable(f"worker: cannot use Kafka at {client_config['bootstrap.servers']}: "
                                       f"{cause}: {err.str()}") from None
        errors.clear()
        if time.monotonic() >= deadline:
            raise KafkaUnavailable(
                f"worker: cannot reach Kafka at {client_config['bootstrap.servers']} "
                f"(KAFKA_BOOTSTRAP_SERVERS; security {client_config.get('security.protocol', 'PLAINTEXT')}): "
                f"{last.args[0].str() if last.args and hasattr(last.args[0], 'str') else last}") from None


def _quiet() -> logging.Logger:
    quiet = logging.getLogger("rerank.topics.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    return quiet
