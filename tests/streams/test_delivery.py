"""Delivery and topic metadata without a broker: a fake producer and a fake admin client.

What the real-broker tests (test_worker.py, test_faults.py) show end to end, here part by part:
an answer is acked only after it is delivered, retried, rerouted from a missing reply_to
topic, replaced when too large, and counted as what was delivered.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from fakes import Clock, FakeAdmin, FakeProducer

from schemas import ErrorCode, RequestError
from streams import metrics
from streams.answers import Answers, Outbound
from streams.delivery import DELIVERY_ATTEMPTS, Delivery
from streams.topic_metadata import TOPIC_LIMIT_TTL_S, TOPIC_LIST_TTL_S, TopicMetadata

ANSWERS = Answers(request_topic="req", response_topic="resp", dead_letter_topic="dlq", worker="w1",
                  model="m", engine="e")


def make_delivery(producer: FakeProducer, admin: FakeAdmin, producer_limit: int = 1_000_000):
    acked, released, failures = [], [], []

    async def ack(event):
        producer.events.append(f"ack {event}")
        acked.append(event)

    async def release(pairs):
        released.append(pairs)

    async def on_failure(exc):
        failures.append(exc)

    delivery = Delivery(lambda: producer, TopicMetadata(lambda: admin, producer_limit), ANSWERS,
                        ack=ack, release=release, on_failure=on_failure, backoff_s=0.0)
    return delivery, acked, released, failures


def error_answer(request_id="r1", reply_to=None) -> Outbound:
    return ANSWERS.error(RequestError(ErrorCode.INVALID_REQUEST, "bad", request_id), reply_to)


def requests_counted(status: str) -> float:
    return metrics.sample("rerank_requests_total", status=status)


def test_the_request_is_acked_after_its_answer_is_delivered_and_counted_as_delivered():
    producer = FakeProducer()
    delivery, acked, released, failures = make_delivery(producer, FakeAdmin({"resp"}))
    errors_before = metrics.sample("rerank_errors_total", code="invalid_request")
    asyncio.run(delivery.deliver([error_answer()], ["event-1"], pairs=7))
    assert producer.events == ["sent resp b'r1'", "ack event-1"]
    assert released == [7] and not failures
    assert metrics.sample("rerank_errors_total", code="invalid_request") == errors_before + 1


def test_a_failed_produce_is_retried_and_then_given_up_unacked():
    producer = FakeProducer(failures=2)
    delivery, acked, released, failures = make_delivery(producer, FakeAdmin({"resp"}))
    asyncio.run(delivery.deliver([error_answer()], ["e"], pairs=3))
    assert acked == ["e"] and len(producer.sent) == 1  # the third attempt went through

    producer = FakeProducer(failures=DELIVERY_ATTEMPTS)
    delivery, acked, released, failures = make_delivery(producer, FakeAdmin({"resp"}))
    asyncio.run(delivery.deliver([error_answer()], ["e"], pairs=3))
    assert acked == [] and len(failures) == 1 and released == [3]  # left to be redelivered, room freed


def test_a_missing_reply_to_topic_gets_the_answer_on_the_response_topic_as_an_error():
    producer = FakeProducer()
    delivery, acked, *_ = make_delivery(producer, FakeAdmin({"resp"}))
    asyncio.run(delivery.deliver([error_answer(reply_to="rerank-replies.gone")], ["e"]))
    ((topic, key, value, _),) = producer.sent
    assert topic == "resp" and key == b"r1" and acked == ["e"]
    body = json.loads(value)
    assert body["error"]["code"] == "invalid_request" and "rerank-replies.gone" in body["error"]["message"]


def test_a_reply_to_topic_that_refuses_the_answer_falls_back_too():
    producer = FakeProducer(refusing=frozenset({"rerank-replies.denied"}))
    delivery, acked, *_ = make_delivery(producer, FakeAdmin({"resp", "rerank-replies.denied"}))
    asyncio.run(delivery.deliver([error_answer(reply_to="rerank-replies.denied")], ["e"]))
    assert [t for t, *_ in producer.sent] == ["resp"] and acked == ["e"]


def test_an_answer_too_large_for_its_topic_becomes_a_too_large_error():
    producer = FakeProducer()
    delivery, acked, *_ = make_delivery(producer, FakeAdmin({"resp"}, {"resp": 200}))
    big = Outbound("resp", b"r1", b"x" * 5000, request_id="r1", status="ok")
    asyncio.run(delivery.deliver([big], ["e"]))
    ((_, _, value, _),) = producer.sent
    body = json.loads(value)
    assert body["status"] == "error" and body["error"]["code"] == "too_large" and "200 bytes" in body["error"]["message"]
    assert acked == ["e"]


def test_a_dead_letter_too_large_for_its_topic_keeps_its_headers_without_its_body():
    producer = FakeProducer()
    delivery, *_ = make_delivery(producer, FakeAdmin({"dlq"}), producer_limit=300)
    (dead_letter,) = ANSWERS.rejection(RequestError(ErrorCode.INVALID_REQUEST, "not JSON"), b"\xff" * 4000, None)
    asyncio.run(delivery.deliver([dead_letter], ["e"]))
    ((topic, _, value, headers),) = producer.sent
    assert topic == "dlq" and value == b"" and ("original-bytes", b"4000") in headers
    assert ("error-code", b"invalid_request") in headers


def test_spawned_deliveries_can_be_awaited_and_cancelled():
    async def scenario():
        producer = FakeProducer()
        delivery, acked, *_ = make_delivery(producer, FakeAdmin({"resp"}))
        delivery.spawn([error_answer("a")], ["a"])
        delivery.spawn([error_answer("b")], ["b"])
        assert len(delivery.in_flight) == 2
        await delivery.wait()
        assert sorted(acked) == ["a", "b"] and not delivery.in_flight

        gate = asyncio.Event()

        async def stuck(event):
            await gate.wait()
        delivery._ack = stuck
        delivery.spawn([error_answer("c")], ["c"])
        await asyncio.sleep(0)
        assert await delivery.cancel() == 1
    asyncio.run(scenario())


def test_topic_metadata_caches_and_asks_again_after_its_ttl():
    async def scenario():
        clock, admin = Clock(), FakeAdmin({"resp"}, {"resp": 5000})
        metadata = TopicMetadata(lambda: admin, producer_limit=1_000_000, clock=clock)
        assert await metadata.exists("resp") and not await metadata.exists("rerank-replies.x")
        assert admin.listed == 1  # the second look-up used the list just made
        admin.topics.add("rerank-replies.x")
        clock.now += TOPIC_LIST_TTL_S + 1
        assert await metadata.exists("rerank-replies.x") and admin.listed == 2

        assert await asyncio.gather(*(metadata.max_message_bytes("resp") for _ in range(5))) == [5000] * 5
        assert admin.described == 1  # one look-up at a time, not one per answer
        clock.now += TOPIC_LIMIT_TTL_S + 1
        admin.fail = True
        assert await metadata.max_message_bytes("resp") == 5000  # the broker away: what was known
        assert admin.described == 2
    asyncio.run(scenario())


def test_topic_metadata_bounds_a_topic_limit_by_the_producers():
    async def scenario():
        metadata = TopicMetadata(lambda: FakeAdmin({"t"}, {"t": 10_000_000}), producer_limit=1_000_000)
        assert await metadata.max_message_bytes("t") == 1_000_000
        failing = TopicMetadata(lambda: FakeAdmin({"t"}, fail=True), producer_limit=1_000_000)
        assert await failing.max_message_bytes("t") == 1_000_000
        assert not await failing.exists("t")
    asyncio.run(scenario())


@pytest.mark.parametrize("key,expected", [(b"abc", "abc"), (None, None), (b"", None), (b"\xff", None),
                                          (b"x" * 129, None)])
def test_a_dead_letter_is_answered_only_under_a_key_that_can_be_a_request_id(key, expected):
    out = ANSWERS.rejection(RequestError(ErrorCode.INVALID_REQUEST, "not JSON"), b"{", key)
    assert out[0].topic == "dlq" and out[0].value == b"{"
    if expected is None:
        assert len(out) == 1 and out[0].status == "error"  # the dead letter settles it
    else:
        assert len(out) == 2 and out[1].key == expected.encode() and out[0].status is None
        assert json.loads(out[1].value)["request_id"] == expected
