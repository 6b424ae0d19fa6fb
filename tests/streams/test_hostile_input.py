"""Hostile input: property tests over the request parser, then nasty messages through a
real broker to one real worker.

The parser must turn any bytes into a request or a ``RequestError`` with a code, quickly.
The worker must answer every message with an error answer or a dead-letter record (or a
ranking, where the message is a valid request however odd), stay up, and keep its memory
bounded. tests/streams/test_worker.py::test_every_bad_input_is_answered_and_a_good_request_still_is
already sends garbage bytes, broken JSON, 100,000-deep nesting, a number as the query, an
unknown field, too many documents, an unknown model, a past deadline and a reply_to naming
the request topic; the cases here are the ones it does not.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest_workers import running_worker, unique_topics
from engines.testmodel import ensure_test_model
from loadgen.client import RerankClient
from loadgen.cluster.workers import WorkerProcess
from schemas import ErrorCode, RequestError, RequestLimits, RerankRequest, encode, parse_request, parse_response

# --- the parser, property by property ---------------------------------------------------

LIMITS = RequestLimits(max_documents=50, max_query_chars=500, max_document_chars=2000)
SERVED = {"served-model"}
# "never hangs": each example gets 2 s (a shared 2-core machine); parsing takes ~1 ms
PARSER = settings(max_examples=300, deadline=timedelta(seconds=2),
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def judged(raw: bytes) -> RerankRequest | RequestError:
    """parse_request's verdict; anything but a request or a RequestError fails the test."""
    try:
        request = parse_request(raw, LIMITS, SERVED)
    except RequestError as err:
        assert isinstance(err.code, ErrorCode)
        assert isinstance(err.message, str) and err.message
        # the error answer is always writable and reads back as an error response
        answer = parse_response(encode(err.to_response()))
        assert answer.status == "error" and answer.error.code == err.code
        assert err.request_id is None or 1 <= len(err.request_id) <= 128
        return err
    assert isinstance(request, RerankRequest)
    # a request that parses can be written out again and reads back the same
    assert parse_request(encode(request), LIMITS, SERVED) == request
    return request


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=25)

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)  # no lone surrogates
valid_requests = st.fixed_dictionaries(
    {"request_id": texts.filter(lambda s: 1 <= len(s) <= 128),
     "query": texts.filter(bool),
     "documents": st.lists(texts, min_size=1, max_size=8)},
    optional={"top_n": st.integers(1, 20), "return_documents": st.booleans(), "raw_scores": st.booleans(),
              "model": st.just("served-model"), "priority": st.integers(-1000, 1000)})
FIELDS = ["request_id", "query", "documents", "top_n", "return_documents", "raw_scores", "model",
          "reply_to", "deadline_ms", "prefilter", "priority", "colour"]


@PARSER
@given(st.binary(max_size=2048))
def test_any_bytes_are_a_request_or_a_request_error(raw: bytes) -> None:
    judged(raw)


@PARSER
@given(json_values)
def test_any_json_value_is_a_request_or_a_request_error(value: Any) -> None:
    verdict = judged(json.dumps(value).encode())
    if not isinstance(value, dict):
        assert isinstance(verdict, RequestError) and verdict.request_id is None


@PARSER
@given(valid_requests)
def test_generated_valid_requests_are_accepted(payload: dict) -> None:
    verdict = judged(json.dumps(payload).encode())
    assert isinstance(verdict, RerankRequest), verdict


@PARSER
@given(valid_requests, st.sampled_from(FIELDS), json_values, st.sampled_from(["set", "drop"]))
def test_a_mutated_field_is_accepted_or_rejected_under_its_request_id(payload: dict, field: str, value: Any,
                                                                      how: str) -> None:
    mutated = dict(payload)
    if how == "drop":
        mutated.pop(field, None)
    else:
        mutated[field] = value
    verdict = judged(json.dumps(mutated).encode())
    if isinstance(verdict, RequestError) and field != "request_id":
        # the id survived the mutation, so the client can be answered under it
        assert verdict.request_id == payload["request_id"], verdict


@PARSER
@given(valid_requests, st.data())
def test_mutated_bytes_of_a_valid_request_are_a_request_or_a_request_error(payload: dict, data) -> None:
    raw = bytearray(json.dumps(payload, ensure_ascii=data.draw(st.booleans())).encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if action == "flip" and where < len(raw):
            raw[where] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut":
            del raw[where:]
        elif action == "insert":
            raw[where:where] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and where < len(raw):
            del raw[where]
    judged(bytes(raw))


@pytest.mark.parametrize("raw", [
    b'{"request_id": "n", "query": "q", "documents": ["d"], "top_n": ' + b"9" * 10_000 + b"}",  # huge int
    b'{"request_id": "n", "query": "q", "documents": ["d"], "top_n": 1e999}',  # float overflow
    b'{"request_id": "n", "query": "q", "documents": ["d"], "top_n": NaN}',
    b'{"request_id": "n", "query": "q", "documents": ["d"], "priority": ' + b"9" * 10_000 + b"}",  # huge priority
    b'{"request_id": "n", "query": "q", "documents": ["d"], "priority": -1e308}',
    b'{"request_id": "n", "request_id": "m", "query": "q", "documents": ["d"]}',  # duplicate key
    b'\xef\xbb\xbf{"request_id": "n", "query": "q", "documents": ["d"]}',  # UTF-8 BOM
    b'{"request_id": "n", "query": "q\\ud800", "documents": ["d"]}',  # unpaired surrogate escape
    b'{"request_id": "n", "query": "\xed\xa0\x80", "documents": ["d"]}',  # surrogate encoded in UTF-8
    b'{"request_id": "n", "query": "\xc0\xaf", "documents": ["d"]}',  # overlong UTF-8
    b'"' + b"a" * 100_000,  # unterminated string
    b"{" * 50_000,  # unterminated nesting
])
def test_nasty_bytes_are_judged_quickly(raw: bytes) -> None:
    started = time.monotonic()
    judged(raw)
    assert time.monotonic() - started < 2.0


# --- the worker, through the broker -----------------------------------------------------

RSS_GROWTH_BOUND_MIB = 600  # generous: ~1 MB messages are parsed and scored several at a time


@pytest.fixture(scope="module")
def topics() -> dict[str, str]:
    return unique_topics()


@pytest.fixture(scope="module")
def worker(kafka_bootstrap, topics, tmp_path_factory):
    env = {**topics, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "RERANK_MODEL": str(ensure_test_model()),
           "RERANK_ENGINE": "onnx", "RERANK_PRECISION": "fp32", "RERANK_REQUEST_PARTITIONS": "1",
           "RERANK_RESPONSE_PARTITIONS": "1", "RERANK_SUMMARY_EVERY_S": "2"}
    with running_worker(env, tmp_path_factory.mktemp("hostile") / "worker.log", "worker-h") as proc:
        yield proc


def topic_max_message_bytes(bootstrap: str, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return int(future.result(30)["max.message.bytes"].value)


def read_all(bootstrap: str, topic: str) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "fetch.max.bytes": 52_428_800})
    _, end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.assign([TopicPartition(topic, 0, 0)])
    out, deadline = [], time.monotonic() + 30
    while len(out) < end and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            out.append(msg)
    consumer.close()
    return out


class RssSampler:
    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.baseline = worker.rss_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.peak = max(self.peak, self.worker.rss_bytes())
            except OSError:
                return

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20


@pytest.mark.kafka
@pytest.mark.timeout(400)
def test_nasty_messages_through_the_broker_are_each_answered_and_the_worker_stays_up(
        kafka_bootstrap, topics, worker):
    request_topic, dlq = topics["RERANK_REQUEST_TOPIC"], topics["RERANK_DEAD_LETTER_TOPIC"]
    limit = topic_max_message_bytes(kafka_bootstrap, request_topic)
    tag = uuid.uuid4().hex[:6]
    doc = "Kafka partitions spread load across consumers."

    def body(name: str, **fields) -> bytes:
        return json.dumps({"request_id": f"{name}-{tag}", "query": "how is load spread", "documents": [doc, "cats"],
                           **fields}).encode()

    def at_max_size(name: str, **fields) -> bytes:
        """A valid request whose record is within 200 bytes of the broker's limit."""
        base = len(body(name, documents=[""] * 6, **fields))
        room = limit - base - 200
        return body(name, documents=[(doc + " ") * (room // 6 // (len(doc) + 1))
                                     + "x" * (room // 6 % (len(doc) + 1)) for _ in range(6)], **fields)

    # name -> (value, expected first answer: "ok" or an error code, dead-lettered?)
    cases: dict[str, tuple[bytes, str, bool]] = {
        "maxsize": (at_max_size("maxsize"), "ok", False),
        # its answer, carrying ~1 MB of documents back, is larger than the response topic takes
        "maxsize-echo": (at_max_size("maxsize-echo", return_documents=True), "too_large", False),
        # unreadable and at the limit: the dead letter (body + headers) would exceed the limit
        "maxsize-garbage": (b"\xff" + b"\xfe" * (limit - 150), "invalid_request", True),
        "docs100k": (body("docs100k", documents=["d"] * 100_000), "too_large", False),
        "doc1mb": (body("doc1mb", documents=["x" * 1_000_000]), "too_large", False),
        "nested-field": (body("nested-field", documents=json.loads("[" * 500 + "]" * 500)), "invalid_request", False),
        "surrogate-utf8": (body("surrogate-utf8").replace(b"cats", b"c\xed\xa0\x80ts"), "invalid_request", True),
        "overlong-utf8": (body("overlong-utf8").replace(b"cats", b"c\xc0\xafts"), "invalid_request", True),
        "surrogate-escape": (body("surrogate-escape").replace(b"cats", b"c\\ud800ts"), "invalid_request", False),
        # raw control characters inside a JSON string are not JSON (they must be escaped)
        "raw-nul-in-json": (body("raw-nul-in-json").replace(b"cats", b"c\x00ts"), "invalid_request", True),
        # NUL and control characters are text: ranked like any other
        "control-chars": (body("control-chars", query="nul\x00 bell\x07 esc\x1b[31m del\x7f",
                               documents=["\x00" * 10, "line\r\nfeed\ttab\x0b\x0c", doc + "\x00"]), "ok", False),
        "numbers-docs": (body("numbers-docs", documents=[1, 2.5, True]), "invalid_request", False),
        "numbers-topn": (body("numbers-topn", top_n="3"), "invalid_request", False),
        # no readable request_id: answered under the record key, and the message dead-lettered
        "numbers-id": (json.dumps({"request_id": 12345, "query": "q", "documents": [doc]}).encode(),
                       "invalid_request", True),
        "reply-elsewhere": (body("reply-elsewhere", reply_to="elsewhere"), "invalid_request", False),
        "reply-dlq": (body("reply-dlq", reply_to=dlq), "invalid_request", False),
        "reply-response-topic": (body("reply-response-topic", reply_to=topics["RERANK_RESPONSE_TOPIC"]),
                                 "invalid_request", False),
        "reply-request-topic": (body("reply-request-topic", reply_to=request_topic), "invalid_request", False),
    }
    over_limit = b"x" * (limit + 1)
    refused: list[KafkaError] = []
    with RerankClient(kafka_bootstrap, request_topic, [topics["RERANK_RESPONSE_TOPIC"]]) as client, \
            RssSampler(worker) as rss:
        started = time.monotonic()
        ids = {name: client.send_raw(value, key=f"{name}-{tag}") for name, (value, _, _) in cases.items()}
        # one request_id, two messages: each message gets its own answer (the worker keeps no
        # memory of ids; a client's retry and a redelivery look the same to it)
        dup = f"dup-{tag}"
        client.send({"request_id": dup, "query": "q", "documents": ["one", "two"]})
        client.send_raw(json.dumps({"request_id": dup, "query": "q", "documents": ["a", "b", "c"]}).encode(), key=dup)
        # over the broker's limit: refused at produce time, the worker never sees it
        direct = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 10_000_000})
        direct.produce(request_topic, over_limit, key=f"over-{tag}", on_delivery=lambda e, m: refused.append(e))
        assert direct.flush(30) == 0
        client.flush(60)
        waited = client.wait([*ids.values(), dup], 240)
        good = client.send({"request_id": f"good-{tag}", "query": "how is load spread", "documents": [doc, "cats"]})
        client.flush()
        good_answered = client.wait([good], 60)
        elapsed = time.monotonic() - started
        unanswered = [name for name, i in ids.items() if not client.answers(i)]
        assert waited and not unanswered, f"unanswered: {unanswered}\n{worker.tail()}"
        assert good_answered, "a good request after the nasty ones was not answered"

        outcome = {}
        for name, (_, expected, _) in cases.items():
            answers = client.answers(ids[name])
            assert len(answers) == 1, f"{name}: {len(answers)} answers"
            response = answers[0].response
            outcome[name] = response["status"] if response["status"] == "ok" else response["error"]["code"]
        print(f"\n{len(cases) + 3} nasty messages answered in {elapsed:.1f} s; worker RSS "
              f"{rss.baseline / 2**20:.0f} MiB -> peak {rss.peak / 2**20:.0f} MiB (+{rss.growth_mib:.0f} MiB); "
              f"broker limit {limit} bytes")
        for name, got in outcome.items():
            print(f"  {name:22s} {got}")
        assert outcome == {name: expected for name, (_, expected, _) in cases.items()}
        control = client.answers(ids["control-chars"])[0].response
        assert control["request_id"] == f"control-chars-{tag}" and len(control["results"]) == 3
        echo = client.answers(ids["maxsize-echo"])[0].response["error"]["message"]
        assert "return_documents" in echo, echo

        dup_answers = client.answers(dup)
        assert sorted(a.response["meta"]["documents"] for a in dup_answers) == [2, 3], \
            "each message with the duplicated request_id gets its own answer"
        assert client.answers(good)[0].response["status"] == "ok"

    assert len(refused) == 1 and refused[0] is not None and refused[0].code() == KafkaError.MSG_SIZE_TOO_LARGE

    dead = {m.key().decode(): m for m in read_all(kafka_bootstrap, dlq)}
    expected_dead = {f"{name}-{tag}" for name, (_, _, dlqd) in cases.items() if dlqd}
    assert set(dead) == expected_dead, (set(dead), expected_dead)
    for key, m in dead.items():
        headers = dict(m.headers())
        assert headers["error-code"] == b"invalid_request" and headers["error-message"], key
    garbage = dead[f"maxsize-garbage-{tag}"]
    assert garbage.value() in (None, b"") and int(dict(garbage.headers())["original-bytes"]) == len(cases["maxsize-garbage"][0]), \
        "a dead letter too large for the topic keeps its headers, not its body"
    assert dead[f"numbers-id-{tag}"].value() == cases["numbers-id"][0], "the original bytes are kept"

    # nothing was written to the request topic but what this test sent (no reply_to loop)
    sent_here = len(cases) + 3  # the cases, two messages with one id, the good request
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"c-{tag}"})
    low, high = consumer.get_watermark_offsets(TopicPartition(request_topic, 0), timeout=10)
    consumer.close()
    assert high - low == sent_here, f"{high - low} records on the request topic, {sent_here} sent"

    assert worker.proc.poll() is None, "the worker died:\n" + worker.tail()
    assert (worker.status("/healthz") or {}).get("alive") is True
    assert rss.growth_mib < RSS_GROWTH_BOUND_MIB, f"worker RSS grew by {rss.growth_mib:.0f} MiB"
