"""Security against a real secured broker: SASL_SSL (SCRAM-SHA-512, a CA made for this run)
and ACLs (StandardAuthorizer), from deploy/kafka/kafka.sh with KAFKA_SECURITY=sasl_ssl.

Principals: ``admin`` (super user: topics, users, ACLs), ``worker-*`` (reads the request
topic, writes the response/dead-letter topics and the reply_to prefix, explicitly denied one
topic inside that prefix), ``client-*`` (writes requests, reads answers), ``reader-*`` (may
see the request topic and read answers, not write requests), ``stranger-*`` (no ACL at all),
``nogroup-*``/``nowrite-*``/``hidden-*`` (a worker's ACLs less its group / less WRITE on its
response topic / less any ACL on it).
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, NewTopic, ResourcePatternType,
                                   ResourceType)

from engines.testmodel import ensure_test_model
from loadgen.client import ClientError, RerankClient
from loadgen.cluster.workers import WorkerProcess
from loadgen.cluster.local_kafka import REPO, secure_local_broker

pytestmark = pytest.mark.kafka

ALLOW, DENY = AclPermissionType.ALLOW, AclPermissionType.DENY
LITERAL, PREFIXED = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
TOPIC, GROUP = ResourceType.TOPIC, ResourceType.GROUP
READ, WRITE, DESCRIBE = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE


@pytest.fixture(scope="module")
def secure():
    with secure_local_broker() as broker:
        print(f"\nkafka (sasl_ssl): {broker.bootstrap}, CA {broker.ca_file}")
        yield broker


@pytest.fixture(scope="module")
def setup(secure, tmp_path_factory):
    """Users, topics and ACLs, created as admin through the Admin API."""
    tag = uuid.uuid4().hex[:8]
    s = SimpleNamespace(
        tag=tag, request=f"req-{tag}", response=f"resp-{tag}", dlq=f"dlq-{tag}", group=f"workers-{tag}",
        prefix=f"replies-{tag}.", outside=f"outside-{tag}", elsewhere=f"elsewhere-{tag}",
        users={role: (f"{role}-{tag}", f"{role}-pw-{secrets.token_urlsafe(12)}")
               for role in ("worker", "client", "reader", "readonly", "stranger", "nogroup", "nowrite", "hidden")},
    )
    s.reply_ok, s.reply_denied = s.prefix + "ok", s.prefix + "denied"
    for name, password in s.users.values():
        secure.add_user(name, password)
    admin = secure.admin()
    topics = [NewTopic(t, 2 if t == s.request else 1, 1)
              for t in (s.request, s.response, s.dlq, s.reply_ok, s.reply_denied, s.outside, s.elsewhere)]
    for future in admin.create_topics(topics).values():
        future.result(30)

    def user(role):
        return f"User:{s.users[role][0]}"

    def acl(role, rtype, name, op, pattern=LITERAL, permission=ALLOW):
        return AclBinding(rtype, name, pattern, user(role), "*", op, permission)

    acls = [
        # the worker: its own topics and the reply_to prefix, nothing else
        acl("worker", TOPIC, s.request, READ), acl("worker", GROUP, s.group, READ),
        acl("worker", TOPIC, s.response, WRITE), acl("worker", TOPIC, s.dlq, WRITE),
        acl("worker", TOPIC, s.prefix, WRITE, PREFIXED),
        # a topic inside the prefix that the cluster's operators closed to the worker
        acl("worker", TOPIC, s.reply_denied, WRITE, LITERAL, DENY),
        # half-configured workers
        acl("nogroup", TOPIC, s.request, READ), acl("nogroup", TOPIC, s.response, WRITE),
        acl("nogroup", TOPIC, s.dlq, WRITE),
        acl("nowrite", TOPIC, s.request, READ), acl("nowrite", GROUP, s.group, READ),
        acl("nowrite", TOPIC, s.dlq, WRITE), acl("nowrite", TOPIC, s.response, DESCRIBE),
        acl("hidden", TOPIC, s.request, READ), acl("hidden", GROUP, s.group, READ),
        acl("hidden", TOPIC, s.dlq, WRITE),
        # a client: writes requests, reads answers (the RerankClient's group is rerank-client-*)
        acl("client", TOPIC, s.request, WRITE), acl("client", TOPIC, s.response, READ),
        acl("client", TOPIC, s.prefix, READ, PREFIXED), acl("client", GROUP, "rerank-client-", READ, PREFIXED),
        # a reader: sees the request topic, reads answers, may not write requests (it writes
        # another topic); readonly: the same, but may write nowhere
        acl("reader", TOPIC, s.request, DESCRIBE), acl("reader", TOPIC, s.response, READ),
        acl("reader", GROUP, "rerank-client-", READ, PREFIXED), acl("reader", TOPIC, s.elsewhere, WRITE),
        acl("readonly", TOPIC, s.request, DESCRIBE), acl("readonly", TOPIC, s.response, READ),
        acl("readonly", GROUP, "rerank-client-", READ, PREFIXED),
    ]
    for future in admin.create_acls(acls).values():
        future.result(30)
    s.password_file = tmp_path_factory.mktemp("secrets") / "worker.password"
    s.password_file.write_text(s.users["worker"][1] + "\n")
    s.password_file.chmod(0o600)
    return s


def worker_env(secure, s, **kafka) -> dict[str, str]:
    return {
        **kafka, "RERANK_REQUEST_TOPIC": s.request, "RERANK_RESPONSE_TOPIC": s.response,
        "RERANK_DEAD_LETTER_TOPIC": s.dlq, "RERANK_REPLY_TO_PREFIX": s.prefix, "RERANK_GROUP_ID": s.group,
        "RERANK_MODEL": str(ensure_test_model()), "RERANK_ENGINE": "onnx", "RERANK_PRECISION": "fp32",
        "RERANK_REQUEST_PARTITIONS": "2", "RERANK_SUMMARY_EVERY_S": "2",
    }


@pytest.fixture(scope="module")
def worker(secure, setup, tmp_path_factory):
    """A worker whose password comes from a file, logging at debug level (everything it can)."""
    env = worker_env(secure, setup, **secure.worker_env(setup.users["worker"][0], password_file=setup.password_file),
                     RERANK_LOG_LEVEL="debug")
    proc = WorkerProcess(env, tmp_path_factory.mktemp("worker") / "worker.log", name=f"secure-{setup.tag}").start()
    try:
        proc.wait_ready(180)
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(secure, setup, worker):
    name, password = setup.users["client"]
    with RerankClient(secure.bootstrap, setup.request, [setup.response, setup.reply_ok],
                      extra_config=secure.client_config(name, password)) as c:
        yield c


def request(rid: str, **extra) -> dict:
    return {"request_id": rid, "query": "how do consumer groups share partitions",
            "documents": ["Each partition is read by one member of the group.", "Cats sleep a lot.",
                          "A consumer group spreads partitions over its members."], **extra}


def end_offset(secure, topic: str) -> int:
    consumer = Consumer({**secure.client_config(), "group.id": "offsets-probe"})
    try:
        metadata = consumer.list_topics(topic, timeout=15)
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1]
                   for p in metadata.topics[topic].partitions)
    finally:
        consumer.close()


def produce_as(secure, user: tuple[str, str], topic: str) -> KafkaError | None:
    """Produces one record as a user; returns the broker's delivery error (None: written)."""
    results = []
    producer = Producer(secure.client_config(*user))
    producer.produce(topic, b"probe", on_delivery=lambda err, msg: results.append(err))
    assert producer.flush(30) == 0, "delivery report within 30 s"
    return results[0]


def test_worker_with_the_right_credentials_answers_end_to_end(client, setup):
    rid, rid_reply = f"ok-{uuid.uuid4().hex[:6]}", f"reply-{uuid.uuid4().hex[:6]}"
    client.send(request(rid, top_n=2))
    client.send(request(rid_reply, reply_to=setup.reply_ok))
    client.flush()
    assert client.wait([rid, rid_reply], 60), "both requests answered over SASL_SSL"
    (answer,) = client.answers(rid)
    assert answer.topic == setup.response and answer.response["status"] == "ok", answer.response
    assert len(answer.response["results"]) == 2 and answer.response["meta"]["documents"] == 3
    (reply,) = client.answers(rid_reply)
    assert reply.topic == setup.reply_ok and reply.response["status"] == "ok", reply.response


def start_and_expect_exit(secure, setup, kafka: dict[str, str], log_path, case: str) -> str:
    """Starts a worker that must stop by itself, fast, with one last line; returns that line."""
    # A long start-up timeout: the worker must stop on the refusal itself, not on the timeout.
    env = worker_env(secure, setup, **kafka, RERANK_STARTUP_TIMEOUT_S="120")
    proc = WorkerProcess(env, log_path, name=f"{case}-{setup.tag}").start()
    started = time.monotonic()
    try:
        code = proc.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: the worker still runs after 60 s, silently:\n{proc.tail()}")
    finally:
        proc.kill()
        proc.stop()
    elapsed = time.monotonic() - started
    log = proc.log_path.read_text(errors="replace")
    print(f"{case}: exit {code} after {elapsed:.1f}s:\n{log}")
    assert code != 0
    assert elapsed < 30, f"took {elapsed:.1f}s: the refusal, not the 120-s start-up timeout, must stop it"
    lines = [line for line in log.splitlines() if line.strip()]
    assert "Traceback" not in log
    for _, password in setup.users.values():
        assert password not in log
    assert secure.admin_password not in log
    return lines[-1]


@pytest.mark.parametrize("case", ["wrong-password", "unknown-user", "untrusted-ca"])
def test_wrong_credentials_stop_the_worker_at_start_up_with_one_clear_line(secure, setup, tmp_path, case):
    name, password = setup.users["worker"]
    wrong = f"wrong-{secrets.token_urlsafe(12)}"
    kafka = secure.worker_env(name, password=password)
    expected = "Kafka refused the credentials"
    if case == "wrong-password":
        kafka["KAFKA_SASL_PASSWORD"] = wrong
    elif case == "unknown-user":
        kafka["KAFKA_SASL_USERNAME"] = f"nobody-{setup.tag}"
    else:  # the system CAs do not know the test CA
        kafka.pop("KAFKA_SSL_CA_FILE")
        expected = "TLS handshake failed"
    last = start_and_expect_exit(secure, setup, kafka, tmp_path / "worker.log", case)
    assert last.startswith("worker: cannot use Kafka at " + secure.bootstrap) and expected in last, last
    if case == "untrusted-ca":
        assert "certificate verify failed" in last
    else:
        assert "Authentication failed" in last and "SCRAM-SHA-512" in last
    assert wrong not in (tmp_path / "worker.log").read_text(errors="replace")


@pytest.mark.parametrize("case", ["nogroup", "nowrite", "hidden"])
def test_missing_acls_stop_the_worker_at_start_up_with_one_clear_line(secure, setup, tmp_path, case):
    """Without READ on its group the worker used to wait for ever, silently."""
    kafka = secure.worker_env(*setup.users[case][:1], password=setup.users[case][1])
    last = start_and_expect_exit(secure, setup, kafka, tmp_path / "worker.log", case)
    if case == "nogroup":
        assert f"do not allow READ on consumer group {setup.group}" in last and "GROUP_AUTHORIZATION_FAILED" in last
    elif case == "nowrite":
        assert f"do not allow WRITE on topic {setup.response}" in last and "TOPIC_AUTHORIZATION_FAILED" in last
    else:
        assert f"topic {setup.response} is missing or hidden from" in last and "may not create it" in last
    assert setup.users[case][0] in last, last


def test_a_client_without_write_permission_is_refused(secure, setup, worker):
    before = end_offset(secure, setup.request)
    reader = setup.users["reader"]
    # the broker itself refuses the principal
    err = produce_as(secure, reader, setup.request)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    # and the RerankClient says so instead of losing the request silently
    with RerankClient(secure.bootstrap, setup.request, [setup.response],
                      extra_config=secure.client_config(*reader)) as c:
        c.send(request(f"refused-{uuid.uuid4().hex[:6]}"))
        with pytest.raises(ClientError, match="TOPIC_AUTHORIZATION_FAILED"):
            c.flush()
    # one that may write no topic at all is refused an idempotent producer id: said as clearly
    # (whether send() or flush() says it depends on when the broker's refusal arrives: both orders)
    for wait_s in (0, 3):
        with RerankClient(secure.bootstrap, setup.request, [setup.response],
                          extra_config=secure.client_config(*setup.users["readonly"])) as c:
            time.sleep(wait_s)
            with pytest.raises(ClientError, match="refused requests to .*CLUSTER_AUTHORIZATION_FAILED"):
                c.send(request(f"refused-{uuid.uuid4().hex[:6]}"))
                c.flush()
    # a principal with no ACL at all on the topic is told it is not authorized
    with pytest.raises(ClientError, match="not authorized to use topic.*TOPIC_AUTHORIZATION_FAILED"):
        RerankClient(secure.bootstrap, setup.request, [setup.response],
                     extra_config=secure.client_config(*setup.users["stranger"]))
    assert end_offset(secure, setup.request) == before, "nothing reached the request topic"


class SlowCallbacksClient(RerankClient):
    """A client whose delivery callbacks take their time, as on a busy machine."""

    def _delivered(self, *args) -> None:
        time.sleep(3)
        super()._delivered(*args)


def test_flush_waits_for_a_refusal_its_delivery_thread_is_still_handling(secure, setup):
    # The refusal arrives while nothing flushes, so the client's delivery thread serves it; its
    # callback is still running when flush() is called. flush() must wait for it, not return on an
    # empty queue with the refusal unseen (which is how a CI run once lost the CLUSTER_AUTHORIZATION_FAILED).
    with SlowCallbacksClient(secure.bootstrap, setup.request, [setup.response],
                             extra_config=secure.client_config(*setup.users["reader"])) as c:
        c.send(request(f"refused-{uuid.uuid4().hex[:6]}"))
        time.sleep(2)
        with pytest.raises(ClientError, match="TOPIC_AUTHORIZATION_FAILED"):
            c.flush()


def test_no_request_makes_the_worker_write_outside_its_topics(secure, setup, client):
    outside_before = end_offset(secure, setup.outside)
    cases = {
        f"outside-{uuid.uuid4().hex[:6]}": setup.outside,       # outside the prefix: the worker refuses
        f"self-{uuid.uuid4().hex[:6]}": setup.request,          # its own input
        f"denied-{uuid.uuid4().hex[:6]}": setup.reply_denied,   # inside the prefix, the broker's ACL refuses
    }
    for rid, topic in cases.items():
        client.send(request(rid, reply_to=topic))
    client.flush()
    started = time.monotonic()
    assert client.wait(list(cases), 60), "each is answered (none hangs)"
    for rid, topic in cases.items():
        (answer,) = client.answers(rid)
        assert answer.topic == setup.response, (topic, answer.topic)
        assert answer.response["status"] == "error", answer.response
        assert answer.response["error"]["code"] == "invalid_request"
        assert topic in answer.response["error"]["message"]
    print(f"refusals answered within {time.monotonic() - started:.1f}s")
    # the worker did not stall: a good request right after is answered
    rid = f"after-{uuid.uuid4().hex[:6]}"
    client.send(request(rid))
    client.flush()
    assert client.wait([rid], 30) and client.answers(rid)[0].response["status"] == "ok"
    assert end_offset(secure, setup.outside) == outside_before
    assert end_offset(secure, setup.reply_denied) == 0
    # Defence in depth: the broker refuses the worker's principal these topics on its own.
    worker_user = setup.users["worker"]
    for topic in (setup.outside, setup.request, setup.reply_denied):
        err = produce_as(secure, worker_user, topic)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, err)


def test_secrets_never_appear_in_logs_metrics_or_settings_dumps(secure, setup, worker):
    """Runs last: stops the worker to read its whole log."""
    worker_password = setup.users["worker"][1]
    secrets_ = [worker_password, secure.admin_password, setup.users["client"][1]]
    texts = {"/metrics": worker.metrics(), "/healthz": json.dumps(worker.status("/healthz")),
             "/ready": json.dumps(worker.status("/ready"))}
    assert worker.stop() == 0
    log = worker.log_path.read_text(errors="replace")
    texts["worker log"] = log
    # the log is the whole story of a worker that authenticated, served and stopped at debug level
    assert "holding partitions" in log and "summary:" in log and "DEBUG" in log
    assert "SaslAuthenticate" not in log, "SASL frames are never logged, whatever the mechanism"

    # settings dumps: a configuration error, and the settings themselves, with the password set
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": "/tmp",
            **secure.worker_env(setup.users["worker"][0], password=worker_password)}
    bad = {"RERANK_MAX_INFLIGHT_PAIRS": "-5"}, {"KAFKA_SASL_USERNAME": ""}, {"KAFKA_SSL_CA_FILE": "/nonexistent"}
    for overrides in bad:
        proc = subprocess.run([sys.executable, "-m", "streams", "init-topics"], env={**base, **overrides},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "unusable configuration" in proc.stderr, proc.stderr
        texts[f"settings error {overrides}"] = proc.stdout + proc.stderr
    dump = subprocess.run(
        [sys.executable, "-c", "from streams.settings import load_settings; from streams.app import faust_credentials; "
         "s = load_settings(); print(repr(s)); print(s.model_dump_json()); print(faust_credentials(s))"],
        env=base, capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    assert setup.users["worker"][0] in dump.stdout  # the dump is real: it names the user
    texts["settings dump"] = dump.stdout + dump.stderr
    for where, text in texts.items():
        for secret in secrets_:
            assert secret not in text, f"a password appears in {where}"
