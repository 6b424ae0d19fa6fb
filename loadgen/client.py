"""A rerank client on confluent-kafka: publish requests, match responses by request_id.

This is what any application does to use the service, and what the load generator,
the demo and the tests use; it knows nothing of the worker beyond the topics.

Timing: every answer is stamped when ``Consumer.poll`` hands it over, one message per
call, so an answer's latency is the service's and not a batch read's (``consume(500,
0.2)`` would have added up to 200 ms to each). The stamps are ``time.monotonic()`` for
latencies and ``time.time()`` (the clock Kafka record timestamps use) for the breakdown
in :mod:`loadgen.run`; the librdkafka delivery latency of each request says how long the
broker took to acknowledge it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Producer, TopicPartition


class ClientError(RuntimeError):
    """The cluster or a topic is not usable; the message says which and why."""


@dataclass
class Answer:
    request_id: str
    response: dict
    latency_s: float  # received_at - the request's sent_at (time.monotonic)
    received_at: float  # time.monotonic() when poll() returned the answer
    topic: str
    received_wall: float = 0.0  # time.time() at the same moment
    # The answer record's timestamp: (confluent_kafka.TIMESTAMP_* type, ms since the epoch).
    # CreateTime (the default) is when the worker's producer took the answer, on the
    # worker's wall clock; LogAppendTime is when the broker wrote it.
    record_timestamp: tuple[int, int] | None = None


@dataclass
class SentRequest:
    sent_at: float  # time.monotonic() just before produce()
    documents: int
    answers: list[Answer] = field(default_factory=list)
    sent_wall: float = 0.0  # time.time() at the same moment
    # librdkafka's delivery latency: produce() to the broker's acknowledgement (s), and
    # the request record's timestamp as the delivery report gives it
    to_broker_s: float | None = None
    record_timestamp: tuple[int, int] | None = None


@dataclass
class ReceiveStats:
    """What reading answers cost the client itself (the instrument's own overhead)."""

    polls: int = 0  # poll() calls, with or without a message
    messages: int = 0
    cpu_s: float = 0.0  # CPU time of the receiving thread
    handling_s: float = 0.0  # total time from poll() returning a message to it being recorded
    handling_max_s: float = 0.0


# How long one poll() waits when no answer is there: only bounds how soon close() is
# noticed; an answer that arrives ends the wait at once.
POLL_TIMEOUT_S = 0.1
# The delivery thread's poll() wait: also how long flush() may wait for it to step aside.
DELIVERY_POLL_S = 0.02

# Delivery errors that mean "this principal may not write here": no retry will help, so
# flush() raises them instead of letting the requests vanish (on a secured cluster).
REFUSED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
           KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}


def _quiet_logger() -> logging.Logger:
    quiet = logging.getLogger("loadgen.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    return quiet


def _kafka_cause(exc: BaseException) -> KafkaException | None:
    """The KafkaException behind ``exc`` (confluent-kafka chains it under a SystemError when a
    callback runs with a fatal error pending), or None."""
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, KafkaException):
        cause = cause.__cause__
    return cause


class RerankClient:
    """Publishes to the request topic and reads every answer from the response topics.

    Responses are read from each response topic's end as it was when the client started,
    so earlier runs' answers are not mistaken for this one's.
    """

    def __init__(self, bootstrap: str, request_topic: str = "rerank-requests",
                 response_topics: Iterable[str] = ("rerank-responses",), extra_config: dict | None = None,
                 timeout_s: float = 15.0) -> None:
        base = {"bootstrap.servers": bootstrap, "logger": _quiet_logger(), **(extra_config or {})}
        self.request_topic = request_topic
        self.response_topics = list(response_topics)
        self._lock = threading.Lock()
        # notified whenever a request gets its first answer (closed-loop senders wait on it)
        self._first_answer = threading.Condition(self._lock)
        self._pending: dict[str, SentRequest] = {}
        self._answered = 0  # requests with at least one answer
        self.receive_stats = ReceiveStats()
        self.unmatched: list[dict] = []
        # (request_id, error) of every request the cluster did not take
        self.delivery_errors: list[tuple[str, KafkaError]] = []
        self._refused_reported = 0
        # the producer's fatal error as librdkafka reported it: produce() and flush() only
        # say "_FATAL" afterwards, which names no cause
        self._fatal: KafkaError | None = None
        self._stop = threading.Event()
        # flush() serves the delivery callbacks itself: the delivery thread stays out of poll()
        # meanwhile, so that none of them is still running when flush() reads their errors
        self._serve = threading.Condition()
        self._serving = False
        self._flushing = 0
        self.producer = Producer({**base, "linger.ms": 2, "enable.idempotence": True,
                                  "error_cb": self._producer_error,
                                  "message.max.bytes": 10_000_000})
        # read_committed (librdkafka's default, said here because it matters): with
        # RERANK_DELIVERY=exactly_once an answer of an aborted transaction is never seen.
        self.consumer = Consumer({"isolation.level": "read_committed", **base,
                                  "group.id": f"rerank-client-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False, "auto.offset.reset": "latest",
                                  "fetch.max.bytes": 52_428_800})
        self._assign(bootstrap, timeout_s)
        self._thread = threading.Thread(target=self._poll, name="rerank-client", daemon=True)
        self._thread.start()
        self._deliveries = threading.Thread(target=self._serve_deliveries, name="rerank-client-deliveries",
                                            daemon=True)
        self._deliveries.start()

    def _assign(self, bootstrap: str, timeout_s: float) -> None:
        try:
            metadata = self.consumer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise ClientError(f"cannot reach Kafka at {bootstrap}: {exc.args[0].str()}") from None
        for topic in [self.request_topic, *self.response_topics]:
            if topic not in metadata.topics:  # a full listing leaves out topics we may not see
                metadata.topics.update(self.consumer.list_topics(topic, timeout=timeout_s).topics)
            error = metadata.topics[topic].error if topic in metadata.topics else None
            if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise ClientError(f"not authorized to use topic {topic!r} on {bootstrap} "
                                  f"(TOPIC_AUTHORIZATION_FAILED: the cluster's ACLs refuse this client)")
            if topic not in metadata.topics or error is not None:
                raise ClientError(f"topic {topic!r} does not exist on {bootstrap} "
                                  "(start a worker, which creates its topics, or create it)")
        partitions = []
        for topic in self.response_topics:
            for p in metadata.topics[topic].partitions:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                partitions.append(TopicPartition(topic, p, high))
        self.consumer.assign(partitions)

    def _poll(self) -> None:
        # One message per poll(): it returns as soon as librdkafka has one, and blocks (without
        # the GIL, without spinning) up to POLL_TIMEOUT_S when there is none. The stamp is taken
        # before anything else is done with the message.
        stats = self.receive_stats
        while not self._stop.is_set():
            msg = self.consumer.poll(POLL_TIMEOUT_S)
            stats.polls += 1
            if msg is None:
                stats.cpu_s = time.thread_time()
                continue
            now, now_wall = time.monotonic(), time.time()
            if not msg.error():
                self._record(msg, now, now_wall)
            handled = time.monotonic() - now
            stats.messages += 1
            stats.handling_s += handled
            stats.handling_max_s = max(stats.handling_max_s, handled)
            stats.cpu_s = time.thread_time()

    def _serve_deliveries(self) -> None:
        """Runs the delivery callbacks as the acks come (poll() returns at each one), so that
        a request's delivery latency, which librdkafka reads when its callback runs, is the
        ack's and not that of the next send() or flush()."""
        while not self._stop.is_set():
            with self._serve:
                if not self._serve.wait_for(lambda: not self._flushing, POLL_TIMEOUT_S):
                    continue
                self._serving = True
            try:
                self.producer.poll(DELIVERY_POLL_S)
            except KafkaException as exc:  # a fatal producer error: send() and flush() raise it
                self._fatal = self._fatal or exc.args[0]
            except SystemError as exc:  # the same, raised while a callback ran (see _producer_call)
                cause = _kafka_cause(exc)
                if cause is None:
                    raise
                self._fatal = self._fatal or cause.args[0]
            finally:
                with self._serve:
                    self._serving = False
                    self._serve.notify_all()

    def _record(self, msg, now: float, now_wall: float) -> None:
        try:
            response = json.loads(msg.value())
        except (TypeError, ValueError):
            return
        request_id = response.get("request_id") if isinstance(response, dict) else None
        ts_type, ts_ms = msg.timestamp()
        record_timestamp = (ts_type, ts_ms) if ts_type != TIMESTAMP_NOT_AVAILABLE else None
        with self._lock:
            pending = self._pending.get(request_id) if request_id else None
            if pending is None:
                self.unmatched.append(response)
                return
            if not pending.answers:
                self._answered += 1
                self._first_answer.notify_all()
            pending.answers.append(Answer(request_id, response, now - pending.sent_at, now, msg.topic(),
                                          now_wall, record_timestamp))

    def send(self, request: dict, key: str | None = None) -> str:
        """Publishes one request (a dict in the wire contract), keyed by its request_id."""
        request_id = request["request_id"]
        value = json.dumps(request, ensure_ascii=False).encode("utf-8")
        return self.send_raw(value, key=key if key is not None else request_id,
                             request_id=request_id, documents=len(request.get("documents", [])))

    def send_raw(self, value: bytes, key: str | bytes | None, request_id: str | None = None,
                 documents: int = 0) -> str:
        """Publishes arbitrary bytes (tests of bad input use this)."""
        request_id = request_id or (key.decode() if isinstance(key, bytes) else key) or uuid.uuid4().hex
        with self._lock:
            replaced = self._pending.get(request_id)
            if replaced is not None and replaced.answers:
                self._answered -= 1
            pending = self._pending[request_id] = SentRequest(time.monotonic(), documents, sent_wall=time.time())
        while True:
            try:
                self.producer.produce(self.request_topic, value=value, key=key,
                                      on_delivery=lambda err, msg, p=pending, rid=request_id:
                                      self._delivered(rid, err, msg, p))
                break
            except BufferError:  # local queue full: let it drain
                self._producer_call(self.producer.poll, 0.05)
            except KafkaException as exc:  # the producer hit a fatal error earlier
                raise self._refused(exc.args[0]) from None
        self._producer_call(self.producer.poll, 0)
        return request_id

    def _producer_call(self, method, *args):
        """poll/flush, with a fatal producer error (raised by confluent-kafka from poll and
        flush) turned into a ClientError. confluent-kafka then still runs the delivery
        callbacks with that exception pending, which surfaces as a SystemError whose
        __cause__ is the KafkaException."""
        try:
            return method(*args)
        except KafkaException as exc:
            raise self._refused(exc.args[0]) from None
        except SystemError as exc:
            cause = _kafka_cause(exc)
            if cause is None:
                raise
            raise self._refused(cause.args[0]) from None

    def _delivered(self, request_id: str, err: KafkaError | None, msg=None, pending: SentRequest | None = None) -> None:
        if err is not None:
            with self._lock:
                self.delivery_errors.append((request_id, err))
            return
        if pending is not None and msg is not None:
            ts_type, ts_ms = msg.timestamp()
            with self._lock:
                # measured by librdkafka when the ack arrived, not when this callback runs
                pending.to_broker_s = msg.latency()
                pending.record_timestamp = (ts_type, ts_ms) if ts_type != TIMESTAMP_NOT_AVAILABLE else None

    def _producer_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err

    def _refused(self, err: KafkaError) -> ClientError:
        # e.g. CLUSTER_AUTHORIZATION_FAILED: a principal that may write no topic at all gets
        # no idempotent producer id; the producer is then unusable
        if err.code() == KafkaError._FATAL:
            try:  # serves the error callback, which records the cause
                self.producer.poll(0)
            except KafkaException as exc:
                self._fatal = self._fatal or exc.args[0]
            except SystemError as exc:  # a delivery callback ran with the fatal error pending (see _producer_call)
                cause = _kafka_cause(exc)
                if cause is not None:
                    self._fatal = self._fatal or cause.args[0]
            # the delivery thread may be serving the error callback this very moment
            deadline = time.monotonic() + 1.0
            while self._fatal is None and time.monotonic() < deadline:
                time.sleep(0.01)
            err = self._fatal or err
        return ClientError(f"Kafka refused requests to {self.request_topic}: {err.name()}: {err.str()}")

    def flush(self, timeout_s: float = 30.0) -> None:
        """Waits until every request sent so far is delivered; raises ClientError if the cluster
        refused any (once per refusal) or the producer can no longer deliver."""
        with self._serve:  # the delivery thread's callbacks, if it is in one, run to their end first
            self._flushing += 1
            self._serve.wait_for(lambda: not self._serving)
        try:
            undelivered = self._producer_call(self.producer.flush, timeout_s)
        finally:
            with self._serve:
                self._flushing -= 1
                self._serve.notify_all()
        if undelivered != 0:
            raise ClientError(f"requests still undelivered to {self.request_topic} after {timeout_s}s")
        with self._lock:
            fatal = any(err.fatal() or err.code() == KafkaError._FATAL for _, err in self.delivery_errors)
        if self._fatal is not None or fatal:  # the delivery thread met it: nothing is delivered since
            raise self._refused(self._fatal or KafkaError(KafkaError._FATAL))
        with self._lock:
            refused = [(rid, err) for rid, err in self.delivery_errors if err.code() in REFUSED]
            new, self._refused_reported = refused[self._refused_reported:], len(refused)
        if new:
            rid, err = new[0]
            raise ClientError(f"Kafka refused {len(new)} request(s) to {self.request_topic} "
                              f"(first {rid!r}): {err.name()}: {err.str()}")

    def answers(self, request_id: str) -> list[Answer]:
        with self._lock:
            return list(self._pending[request_id].answers)

    def answered(self) -> int:
        with self._lock:
            return self._answered

    def outstanding(self) -> int:
        with self._lock:
            return len(self._pending) - self._answered

    def wait_outstanding_below(self, limit: int, timeout_s: float) -> bool:
        """Blocks until fewer than `limit` requests await their first answer (True), or
        `timeout_s` passes (False). Wakes at the answer, not on a polling tick."""
        with self._first_answer:
            return self._first_answer.wait_for(lambda: len(self._pending) - self._answered < limit, timeout_s)

    def wait(self, request_ids: Iterable[str] | None = None, timeout_s: float = 60.0) -> bool:
        """Waits until every given (default: every sent) request has an answer."""
        ids = list(request_ids) if request_ids is not None else None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                targets = ids if ids is not None else list(self._pending)
                if all(self._pending[i].answers for i in targets):
                    return True
            time.sleep(0.05)
        return False

    def snapshot(self) -> dict[str, SentRequest]:
        with self._lock:
            return {k: SentRequest(v.sent_at, v.documents, list(v.answers), v.sent_wall, v.to_broker_s,
                                v.record_timestamp) for k, v in self._pending.items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._deliveries.join(5)
        try:
            self.producer.flush(5)
        except (KafkaException, SystemError):  # a fatal producer error, reported by flush()
            pass
        self.consumer.close()

    def __enter__(self) -> "RerankClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
