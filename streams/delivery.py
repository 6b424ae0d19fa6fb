"""Delivery: produce each answer, then ack the request it answers (never before).

At-least-once rests here: a request's offset may be committed only once its answer is
acknowledged by the broker (idempotent producer, acks=all), so ``deliver`` acks after the
last of its messages is delivered and never otherwise. What it does on the way:

- **retries** a failed produce (``DELIVERY_ATTEMPTS``, backing off); an answer that cannot be
  delivered after them is handed to ``on_failure`` (the worker stops, unacked, so another
  replica answers it);
- **falls back** from a ``reply_to`` topic that is missing or refuses the answer to the
  response topic, with an ``invalid_request`` answer saying so;
- **fits** each message to its topic's max.message.bytes first. Found by the fault tests: the
  broker's MESSAGE_TOO_LARGE is not retriable, and with the idempotent producer it also burns
  the batch's sequence numbers, so every later produce to that partition fails with
  OUT_OF_ORDER_SEQUENCE_NUMBER and the worker stops; the request, redelivered, then stops the
  next replica too. Instead an oversized answer becomes a too_large error answer, and an
  oversized dead letter keeps its headers but not its body.

Requests are counted in the metrics when the message that settles them is delivered, as
what was delivered (a rerouted answer is an invalid_request error).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from schemas import ErrorCode
from streams import metrics
from streams.answers import Answers, Outbound
from streams.topic_metadata import TopicMetadata

log = logging.getLogger("rerank.worker")

DELIVERY_ATTEMPTS = 5
#: A produce that has not been acknowledged by then counts as failed (and is retried).
DELIVERY_TIMEOUT_S = 30.0


class Producer(Protocol):
    """What delivery needs of faust's producer: ``send`` returns a future of the record's
    acknowledgement."""

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: Any) -> Awaitable[Any]: ...


class Delivery:
    """Sends answers in background tasks and acks the requests they settle.

    ``ack(event)`` acks a request's Kafka event; ``release(pairs)`` frees its in-flight room
    once it is settled (or abandoned); ``on_failure(exc)`` is called when an answer could not
    be delivered at all.
    """

    def __init__(self, producer: Callable[[], Producer], metadata: TopicMetadata, answers: Answers, *,
                 ack: Callable[[Any], Awaitable[None]], release: Callable[[int], Awaitable[None]],
                 on_failure: Callable[[Exception], Awaitable[None]], backoff_s: float = 0.2) -> None:
        self._producer = producer
        self.metadata = metadata
        self.answers = answers
        self._ack = ack
        self._release = release
        self._on_failure = on_failure
        self.backoff_s = backoff_s
        self.in_flight: set[asyncio.Task] = set()

    def spawn(self, outbound: list[Outbound], events: list[Any], pairs: int = 0,
              received: float | None = None) -> None:
        """Delivers in the background; ``wait`` and ``cancel`` reach it."""
        task = asyncio.ensure_future(self.deliver(outbound, events, pairs, received))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def deliver(self, outbound: list[Outbound], events: list[Any], pairs: int = 0,
                      received: float | None = None) -> None:
        """Produces the messages in order, then acks ``events``; frees ``pairs`` either way."""
        try:
            delivered = [await self.produce(message) for message in outbound]
            if received is not None:
                metrics.TOTAL_SECONDS.observe(time.monotonic() - received)
            for message in delivered:
                metrics.count_settled(message.status, message.code)
            for event in events:
                await self._ack(event)
        except Exception as exc:
            # Unacked, the request will be redelivered to whoever holds its partition next.
            await self._on_failure(exc)
        finally:
            if pairs:
                await self._release(pairs)

    async def produce(self, message: Outbound) -> Outbound:
        """Sends ``message`` (or what replaced it: its fallback, a too_large answer) and
        returns what was sent."""
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                if message.fallback is not None and not await self.metadata.exists(message.topic):
                    raise LookupError(f"topic {message.topic!r} does not exist")
                message = await self.fit(message)
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
                # that arrives as the awaited future completes, and a cancelled delivery then
                # went on to ack (found by tests/streams/test_delivery.py).
                async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                    future = await self._producer().send(message.topic, message.key, message.value, None, None,
                                                         message.headers)
                    await future
                return message
            except Exception as exc:
                if message.fallback is not None:
                    log.warning("could not write to reply topic %s (%s); answering on %s instead",
                                message.topic, exc, message.fallback.topic)
                    message = message.fallback
                    continue
                if attempt == DELIVERY_ATTEMPTS:
                    raise
                log.warning("produce to %s failed (attempt %d/%d): %s", message.topic, attempt,
                            DELIVERY_ATTEMPTS, exc)
                await asyncio.sleep(self.backoff_s * 2 ** attempt)
        raise RuntimeError(f"no attempt left for the answer on {message.topic} after its reply topic failed")

    async def fit(self, message: Outbound) -> Outbound:
        """``message``, or what replaces it when its topic would refuse it as too large."""
        limit = await self.metadata.max_message_bytes(message.topic)
        size = message.size()
        if size <= limit:
            return message
        if message.request_id is None:
            metrics.ERRORS.labels(ErrorCode.TOO_LARGE.value).inc()
            log.warning("dead letter of %d bytes exceeds %d (max.message.bytes of %s): sent without its body",
                        size, limit, message.topic)
        else:
            log.warning("answer to %s is %d bytes, more than %s takes (%d): answering too_large instead",
                        message.request_id, size, message.topic, limit)
        return self.answers.too_large_instead(message, size, limit)

    async def wait(self) -> None:
        """Returns once every delivery started so far (and any started meanwhile) is done."""
        while self.in_flight:
            await asyncio.wait(list(self.in_flight))

    async def close(self) -> None:
        """Nothing of its own to close: the producer is faust's."""

    async def cancel(self) -> int:
        """Cancels the deliveries in flight (their requests stay unacked); how many there were."""
        tasks = list(self.in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)
