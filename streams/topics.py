"""Creating the worker's topics before it consumes (faust creates only its own)."""
from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient, ConfigResource, NewTopic, ResourceType

log = logging.getLogger("rerank.topics")


class KafkaUnavailable(SystemExit):
    """Start-up stops: the cluster cannot be reached or refuses us."""


@dataclass(frozen=True)
class Replication:
    """The replication the worker's topics are created with, on a cluster of ``brokers``."""

    factor: int
    min_insync: int
    brokers: int


def replication_for(brokers: int, factor: int | None = None, min_insync: int | None = None) -> Replication:
    """RERANK_REPLICATION_FACTOR and RERANK_MIN_INSYNC_REPLICAS on a cluster of ``brokers``:
    unset (auto), min(3, brokers) and factor - 1 (at least 1), so that one broker can be lost
    without losing an acknowledged write or stopping acks=all writes."""
    if brokers < 1:
        raise KafkaUnavailable("worker: the cluster's metadata lists no broker")
    factor = factor if factor is not None else min(3, brokers)
    if factor > brokers:
        raise KafkaUnavailable(f"worker: RERANK_REPLICATION_FACTOR={factor} but the cluster has {brokers} "
                               f"broker(s): set it to at most {brokers}, or unset it (auto: min(3, brokers))")
    min_insync = min_insync if min_insync is not None else max(1, factor - 1)
    if min_insync > factor:
        raise KafkaUnavailable(f"worker: RERANK_MIN_INSYNC_REPLICAS={min_insync} is more than the replication "
                               f"factor {factor}: no acks=all write could succeed")
    return Replication(factor, min_insync, brokers)


def ensure_topics(client_config: dict[str, str], topics: dict[str, int], replication_factor: int | None = None,
                  min_insync_replicas: int | None = None, timeout_s: float = 30.0) -> Replication | None:
    """Creates each missing topic with its partition count and ``replication_for``'s replication
    (returned; None when every topic existed, so that a worker restarted while a broker is down
    does not refuse an explicit replication factor the live brokers cannot hold); existing ones
    are left as they are (a smaller partition count than asked for,
    and on a multi-broker cluster a replication that cannot survive a broker, are logged,
    never changed)."""
    errors: list[KafkaError] = []
    admin = quiet_admin_client(client_config, error_cb=errors.append)
    metadata = _list_topics(admin, client_config, errors, timeout_s)
    existing = metadata.topics
    for name, n in topics.items():
        if name in existing and len(existing[name].partitions) < n:
            log.warning("topic %s has %d partitions (configured %d): at most %d replicas can share it",
                        name, len(existing[name].partitions), n, len(existing[name].partitions))
    brokers = len(metadata.brokers)
    if brokers > 1:
        _warn_fragile_replication(admin, {name: existing[name] for name in topics if name in existing}, brokers,
                                  timeout_s)
    missing = [name for name in topics if name not in existing]
    if not missing:
        return None
    replication = replication_for(brokers, replication_factor, min_insync_replicas)
    new_topics = [NewTopic(name, num_partitions=topics[name], replication_factor=replication.factor,
                           config={"min.insync.replicas": str(replication.min_insync)}) for name in missing]
    for name, future in admin.create_topics(new_topics, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s (%d partitions, replication factor %d, min.insync.replicas %d)",
                     name, topics[name], replication.factor, replication.min_insync)
        except KafkaException as exc:
            err = exc.args[0]
            if getattr(err, "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                continue  # another replica won the race
            if err.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                # on a cluster with ACLs, a topic this principal may not describe looks missing
                who = client_config.get("sasl.username") or "this client's principal"
                raise KafkaUnavailable(
                    f"worker: topic {name} is missing or hidden from {who}, who may not create it "
                    f"({err.name()}): create it as an admin and allow {who} to use it") from None
            raise KafkaUnavailable(f"worker: could not create topic {name}: {err}") from None
    return replication


def _warn_fragile_replication(admin: AdminClient, topics: dict, brokers: int, timeout_s: float) -> None:
    """One warning per existing topic that a single broker's loss would stop or lose data of:
    replication factor 1, or (with 3 replicas or more) min.insync.replicas below 2."""
    for name, topic in topics.items():
        if _copies(topic) == 1:
            log.warning("topic %s has replication factor 1 on a %d-broker cluster: losing its broker stops it "
                        "and can lose its records; recreate it with replication factor %d (or move its "
                        "partitions with kafka-reassign-partitions)", name, brokers, min(3, brokers))
    wide = [name for name, topic in topics.items() if _copies(topic) >= 3]
    if not wide:
        return
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in wide],
                                     request_timeout=timeout_s)
    for resource, future in futures.items():
        try:
            min_insync = int(future.result(timeout=timeout_s)["min.insync.replicas"].value)
        except Exception as exc:  # no DESCRIBE_CONFIGS, a busy broker: the check is advice only
            log.info("could not read min.insync.replicas of topic %s: %s", resource.name, exc)
            continue
        if min_insync < 2:
            log.warning("topic %s has min.insync.replicas=%d: an acks=all write is acknowledged with one copy "
                        "alone; set it to 2 (kafka-configs --alter --entity-type topics --entity-name %s "
                        "--add-config min.insync.replicas=2)", resource.name, min_insync, resource.name)


def _copies(topic) -> int:
    """A topic's replication factor as its metadata shows it (its least replicated partition)."""
    return min((len(partition.replicas) for partition in topic.partitions.values()), default=0)


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
                 timeout_s: float):
    """list_topics (the cluster's metadata: topics and brokers), polled in short steps so that a
    fatal connection error stops it at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
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


def check_access(client_config: dict[str, str], group_id: str, read_topics: list[str],
                 write_topics: list[str], timeout_s: float = 30.0) -> None:
    """Start-up check of what the worker's principal may do, on a cluster with ACLs.

    Without READ on its consumer group, faust/aiokafka retries the group join for ever and
    logs nothing (found by tests/streams/test_security.py), and a missing WRITE would surface only
    at the first answer. Asking first turns both into one line naming what is missing.
    """
    who = f"KAFKA_SASL_USERNAME={client_config['sasl.username']}" if client_config.get("sasl.username") \
        else "this client's principal"
    admin = quiet_admin_client(client_config)
    wanted = {t: AclOperation.READ for t in read_topics} | {t: AclOperation.WRITE for t in write_topics}
    for topic, future in admin.describe_topics(TopicCollection(list(wanted)),
                                               include_authorized_operations=True,
                                               request_timeout=timeout_s).items():
        try:
            allowed = future.result(timeout=timeout_s).authorized_operations
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_AUTHORIZATION_FAILED:
                log.warning("could not check access to topic %s: %s", topic, exc.args[0].str())
                continue
            allowed = []
        # None: the broker did not say (no authorizer, or an old broker): nothing to check
        if allowed is not None and wanted[topic] not in allowed and AclOperation.ALL not in allowed:
            raise KafkaUnavailable(f"worker: the cluster's ACLs do not allow {wanted[topic].name} on topic "
                                   f"{topic} to {who} (TOPIC_AUTHORIZATION_FAILED)")
    # The group: describing it needs the DESCRIBE that its READ implies, and says what is allowed.
    deadline = time.monotonic() + timeout_s
    while True:
        # A few seconds per try: on a fresh cluster, after COORDINATOR_LOAD_IN_PROGRESS, a
        # retried describe can stay unanswered (found by tests/loadgen/test_bench_soak.py: worker start-up
        # died with a bare TimeoutError after startup_timeout_s).
        future = admin.describe_consumer_groups([group_id], include_authorized_operations=True,
                                                request_timeout=5)[group_id]
        try:
            allowed = future.result(timeout=6).authorized_operations
            break
        except concurrent.futures.TimeoutError:
            if time.monotonic() > deadline:
                log.warning("could not check access to consumer group %s: no answer within %.0f s",
                            group_id, timeout_s)
                return
            continue
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                allowed = []
                break
            if not err.retriable() and err.code() not in _COORDINATOR_STARTING or time.monotonic() > deadline:
                log.warning("could not check access to consumer group %s: %s", group_id, err.str())
                return
            time.sleep(0.5)  # a fresh cluster is still creating __consumer_offsets
    if allowed is not None and AclOperation.READ not in allowed and AclOperation.ALL not in allowed:
        raise KafkaUnavailable(f"worker: the cluster's ACLs do not allow READ on consumer group {group_id} "
                               f"(RERANK_GROUP_ID) to {who} (GROUP_AUTHORIZATION_FAILED)")


_COORDINATOR_STARTING = {KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
                         KafkaError.NOT_COORDINATOR}


def quiet_admin_client(client_config: dict[str, str], **settings) -> AdminClient:
    """An admin client whose own librdkafka log lines (one a second while a broker is down) are
    left out: aiokafka and our own messages already say what matters."""
    quiet = logging.getLogger("rerank.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    return AdminClient({**client_config, "logger": quiet, **settings})
