"""Acks in offset order: an answered request waits for the earlier ones of its partition, so that
faust never commits past a request still being scored (streams/acks.py says why)."""
from __future__ import annotations

import asyncio
import json

from fakes import FakeApp, FakeEvent, FakeProducer, FakeStream, LengthReranker
from test_worker_parts import service_with

from streams.acks import AckOrder


def events(partition: int, offsets: range) -> list[FakeEvent]:
    return [FakeEvent(b"", f"p{partition}-{o}".encode(), partition=partition, offset=o) for o in offsets]


def test_an_answered_request_waits_for_the_earlier_ones_of_its_partition_only():
    acks = AckOrder()
    a0, a1, a2 = events(0, range(10, 13))
    (b0,) = events(1, range(5, 6))
    for event in (a0, a1, b0, a2):
        acks.taken(event)
    assert acks.answered(a2) == [] and acks.answered(a1) == []  # a0 is still being scored
    assert acks.answered(b0) == [b0]  # another partition does not wait
    assert acks.answered(a0) == [a0, a1, a2]
    assert acks.open == 0


def test_a_partition_redelivered_from_an_older_offset_starts_afresh():
    acks = AckOrder()
    old = events(0, range(20, 23))
    for event in old:
        acks.taken(event)
    again = events(0, range(20, 22))  # the partition came back: faust reads from the commit
    for event in again:
        acks.taken(event)
    assert acks.answered(old[0]) == []  # dropped: it is being answered again
    assert acks.answered(again[1]) == [] and acks.answered(again[0]) == again
    assert acks.open == 0


def test_the_service_acks_a_small_request_answered_first_only_after_the_large_one_before_it():
    async def scenario():
        producer = FakeProducer()
        service = service_with(LengthReranker(), producer, FakeApp(producer))
        engine = asyncio.create_task(service.run_engine())
        large = json.dumps({"request_id": "large", "query": "q", "documents": ["x" * 40] * 5}).encode()
        small = json.dumps({"request_id": "small", "query": "q", "documents": ["y"]}).encode()
        first, second = (FakeEvent(value, key, producer.events, partition=7, offset=o)
                         for o, (value, key) in enumerate([(large, b"large"), (small, b"small")]))
        stream = FakeStream()
        await service.take(stream, first)
        await service.take(stream, second)
        await service.inbox.close()
        await engine
        await service.delivery.wait()
        return producer.events

    log = asyncio.run(scenario())
    # The scheduler answers the small request first; its ack waits for the large one's.
    assert log.index("sent resp b'small'") < log.index("sent resp b'large'")
    assert log.index("ack b'large'") < log.index("ack b'small'")
