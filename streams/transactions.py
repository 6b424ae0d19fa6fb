"""Exactly-once answers (``RERANK_DELIVERY=exactly_once``): each answer and the offset of the
request it settles are committed in one Kafka transaction.

How, and why this way:

- **One transactional producer per request partition**, ``transactional.id`` =
  ``<group>-<request topic>-<partition>``. The worker that holds a partition starts its
  producer before it reads the partition's committed offset (``prepare``, on faust's
  ``on_rebalance_complete``, which comes before the seek): starting it fences every earlier
  holder's producer and aborts the transaction a dead one left open, so the offset read after
  it is final, and a zombie can commit nothing more. (KIP-447 fences by consumer generation
  with one producer per worker, but aiokafka 0.14 speaks only the TxnOffsetCommit v0 that
  needs the per-partition ids of KIP-98.)
- **Answers leave in offset order.** A transaction commits its partition's offset, and that
  offset may only pass requests whose answers are in the same or an earlier transaction. The
  scheduler answers out of order (a small request overtakes a large one), so an answer waits
  here for every earlier request of its partition (``streams.acks.AckOrder`` says which may
  go). That wait is the price of exactly-once beside at-least-once, where an answer is
  produced the moment it is ready.
- **One transaction per partition per ``RERANK_TRANSACTION_INTERVAL_MS``**: the answers ready by
  then, and the offset after the last of them. A transaction that fails is aborted and tried
  again whole; a fenced producer means the partition is someone else's now, and what it held
  is left to them (uncommitted, so redelivered there).

Clients read the response topic with ``isolation.level=read_committed`` (librdkafka's default,
not the Java client's nor aiokafka's): they then see each answer once, and never one from an
aborted transaction.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced

from streams import metrics
from streams.acks import AckOrder, position
from streams.answers import Answers, Outbound
from streams.delivery import DELIVERY_ATTEMPTS, Delivery
from streams.topic_metadata import TopicMetadata

log = logging.getLogger("rerank.worker")

#: A transaction left open longer than this (a worker frozen mid-transaction) is aborted by the
#: broker. A dead worker's is aborted sooner: by the partition's next holder.
TRANSACTION_TIMEOUT_MS = 30_000


def transactional_id(group_id: str, topic: str, partition: int) -> str:
    """The transactional.id of the producer that answers one request partition."""
    return f"{group_id}-{topic}-{partition}"


@dataclass
class _Ready:
    """An answered request waiting for its transaction."""

    event: Any
    outbound: list[Outbound]
    received: float | None


@dataclass
class _Partition:
    """One request partition's producer and the answers waiting for its next transaction."""

    producer: AIOKafkaProducer
    queue: list[_Ready] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    fenced: bool = False
    # one transaction at a time: the loop's and a flush before a rebalance must not overlap
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TransactionalDelivery(Delivery):
    """``Delivery`` with answers and offsets committed together, per request partition.

    ``make_producer(transactional_id)`` builds an unstarted transactional producer with the
    worker's connection settings; ``acks`` is the service's offset-order book, which says
    which answered requests may be committed; ``ack`` tells faust a request is settled once its
    transaction is committed (faust's own commit then writes the same offset again: harmless).
    """

    def __init__(self, make_producer: Callable[[str], AIOKafkaProducer], metadata: TopicMetadata,
                 answers: Answers, acks: AckOrder, *, group_id: str, request_topic: str,
                 interval_s: float, ack: Callable[[Any], Awaitable[None]],
                 release: Callable[[int], Awaitable[None]], on_failure: Callable[[Exception], Awaitable[None]],
                 backoff_s: float = 0.2) -> None:
        super().__init__(lambda: None, metadata, answers, ack=ack, release=release, on_failure=on_failure,
                         backoff_s=backoff_s)
        self._make_producer = make_producer
        self.acks = acks
        self.group_id = group_id
        self.request_topic = request_topic
        self.interval_s = interval_s
        self.partitions: dict[int, _Partition] = {}
        self._assigned: set[int] | None = None  # None: between a revocation and the next assignment
        self._preparing: asyncio.Future | None = None
        self._waiting: dict[int, _Ready] = {}  # id(event) -> its answer, until its turn comes

    # --- what the service calls ------------------------------------------------------------

    def spawn(self, outbound: list[Outbound], events: list[Any], pairs: int = 0,
              received: float | None = None) -> None:
        """Queues the answer for its partition's next transaction (once every earlier request of
        the partition is answered too); frees ``pairs`` now: the engine is done with them."""
        for event in events:
            self._waiting[id(event)] = _Ready(event, outbound, received)
            for ready in self.acks.answered(event):
                self._enqueue(self._waiting.pop(id(ready)))
            if not self.acks.holds(event):  # redelivered since, or settled just now
                self._waiting.pop(id(event), None)
        if pairs:
            task = asyncio.ensure_future(self._release(pairs))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    def assigned(self, partitions: set) -> None:
        """The consumer's new assignment (faust's TPs), before faust acts on it."""
        self._assigned = {tp.partition for tp in partitions if tp.topic == self.request_topic}

    async def revoking(self) -> None:
        """A rebalance takes the partitions: finish starting producers (so that the next holder's
        start comes after, and fences them, not the other way round) and commit what is ready.
        Until the next assignment this worker holds nothing."""
        self._assigned = None
        if self._preparing is not None:
            await asyncio.gather(self._preparing, return_exceptions=True)
        await self.flush()

    async def prepare(self) -> None:
        """Starts (and so fences earlier holders of) the producers of the partitions assigned,
        closes those of the ones given up. Called before the consumer reads the committed
        offsets; does nothing while a rebalance is under way (its assignment prepares then)."""
        if self._assigned is None:
            return
        self._preparing = asyncio.ensure_future(self._hold(set(self._assigned)))
        await self._preparing

    async def _hold(self, partitions: set[int]) -> None:
        fenced = {partition for partition, state in self.partitions.items() if state.fenced}
        for partition in sorted(set(self.partitions) - partitions | fenced):
            await self._close(partition)  # a fenced one held again (after another holder) gets a new producer
        new = sorted(partitions - set(self.partitions))
        started = time.monotonic()
        await asyncio.gather(*(self._open(partition) for partition in new))
        if new:
            log.info("exactly-once: transactional producers ready for partitions %s (%.2f s)",
                     new, time.monotonic() - started)

    async def flush(self) -> None:
        """Commits what is ready now, on every partition (before a rebalance takes partitions)."""
        await asyncio.gather(*(self._commit_ready(partition, state) for partition, state in self.partitions.items()))

    async def wait(self) -> None:
        """Returns once every answer handed over so far that may be committed is committed (or
        left to a new holder)."""
        await super().wait()
        await self.flush()

    async def cancel(self) -> int:
        """Stops the partitions' transactions (the open ones are aborted by the broker when their
        producers close); their requests stay uncommitted. How many answers were left."""
        left = sum(len(p.queue) for p in self.partitions.values()) + len(self.in_flight)
        await super().cancel()
        await self.close()
        return left

    async def close(self) -> None:
        for partition in list(self.partitions):
            await self._close(partition, commit=False)

    # --- per partition ---------------------------------------------------------------------

    def _enqueue(self, ready: _Ready) -> None:
        tp, _ = position(ready.event)
        state = self.partitions.get(tp.partition)
        if state is None or state.fenced:
            # Not ours (any more): left uncommitted for the partition's holder to answer.
            log.warning("exactly-once: an answer for partition %d, which this worker does not hold, is dropped "
                        "(its request is redelivered to the holder)", tp.partition)
            return
        state.queue.append(ready)
        state.wake.set()

    async def _open(self, partition: int) -> None:
        producer = self._make_producer(transactional_id(self.group_id, self.request_topic, partition))
        await producer.start()  # InitProducerId: fences the previous holder, aborts its open transaction
        state = _Partition(producer)
        state.task = asyncio.ensure_future(self._run(partition, state))
        self.partitions[partition] = state

    async def _close(self, partition: int, commit: bool = True) -> None:
        state = self.partitions.pop(partition, None)
        if state is None:
            return
        if commit:
            await self._commit_ready(partition, state)
        if state.task is not None:
            state.task.cancel()
            await asyncio.gather(state.task, return_exceptions=True)
        await _stop_quietly(state.producer, partition)

    async def _run(self, partition: int, state: _Partition) -> None:
        """The partition's transaction loop: at most one transaction per interval."""
        while not state.fenced:
            await state.wake.wait()
            await asyncio.sleep(self.interval_s)  # let more answers join this transaction
            state.wake.clear()
            await self._commit_ready(partition, state)

    async def _commit_ready(self, partition: int, state: _Partition) -> None:
        async with state.lock:
            if state.fenced or not state.queue:
                return
            batch, state.queue = state.queue, []
            try:
                delivered = await self._transaction(partition, state, batch)
            except ProducerFenced as exc:
                state.fenced = True
                if self._assigned is not None and partition in self._assigned:
                    # The group says this worker holds it, yet another producer started since: a
                    # zombie (this worker, dropped from the group without knowing it yet, or
                    # another, starting late). Stopping is the one safe way on: a restart
                    # rejoins the group and reads the committed offsets again.
                    await self._on_failure(RuntimeError(
                        f"exactly-once: the producer of partition {partition}, which this worker holds, was "
                        f"fenced by another ({exc}); {len(batch)} answers left uncommitted"))
                    return
                log.warning("exactly-once: partition %d has a newer holder; its %d uncommitted answers are left "
                            "to it", partition, len(batch))
                return
            except Exception as exc:
                await self._on_failure(exc)
                return
            # under the lock: faust hears of one transaction's requests before the next one's
            await self._settled(batch, delivered)

    async def _settled(self, batch: list[_Ready], delivered: list[list[Outbound]]) -> None:
        """A transaction is committed: count what it delivered, and tell faust."""
        for ready, messages in zip(batch, delivered):
            if ready.received is not None:
                metrics.TOTAL_SECONDS.observe(time.monotonic() - ready.received)
            for message in messages:
                metrics.count_settled(message.status, message.code)
        metrics.TRANSACTIONS.inc()
        for ready in batch:
            await self._ack(ready.event)

    async def _transaction(self, partition: int, state: _Partition, batch: list[_Ready]) -> list[list[Outbound]]:
        """One transaction: every answer of ``batch``, then the offset after it. One that fails is
        tried again whole, DELIVERY_ATTEMPTS times in all, each time on a new producer of the same
        transactional.id (starting it aborts what the failed one left open; aiokafka's producer is
        unusable after most transaction errors)."""
        tp = TopicPartition(self.request_topic, partition)
        next_offset = position(batch[-1].event)[1] + 1
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                async with asyncio.timeout(2 * TRANSACTION_TIMEOUT_MS / 1000):
                    await state.producer.begin_transaction()
                    # after a failure, reply_to answers go to the response topic instead (a
                    # reply topic that refuses them must not fail every retry, as at least once)
                    delivered = [[await self._final(m, attempt > 1) for m in r.outbound] for r in batch]
                    # all sent at once, then awaited: one round trip per partition, not per answer
                    sent = [await state.producer.send(m.topic, m.value, key=m.key, headers=m.headers)
                            for messages in delivered for m in messages]
                    await asyncio.gather(*sent)
                    await state.producer.send_offsets_to_transaction({tp: next_offset}, self.group_id)
                    await state.producer.commit_transaction()
                return delivered
            except ProducerFenced:
                raise
            except Exception as exc:
                if attempt == DELIVERY_ATTEMPTS:
                    raise
                log.warning("exactly-once: transaction on partition %d failed (attempt %d/%d): %r", partition,
                            attempt, DELIVERY_ATTEMPTS, exc)
                await asyncio.sleep(self.backoff_s * 2 ** attempt)
                await _stop_quietly(state.producer, partition)
                if self._assigned is None or partition not in self._assigned:
                    # A new producer would fence whoever holds the partition now: leave it to them.
                    raise ProducerFenced() from exc
                state.producer = self._make_producer(transactional_id(self.group_id, self.request_topic, partition))
                await state.producer.start()
        raise AssertionError("unreachable")

    async def _final(self, message: Outbound, fall_back: bool = False) -> Outbound:
        """``message``, or what replaces it: its fallback when a reply_to topic is missing (or
        ``fall_back``), a too_large answer when its topic would refuse it."""
        if message.fallback is not None and (fall_back or not await self.metadata.exists(message.topic)):
            log.warning("reply topic %s does not exist; answering on %s instead", message.topic,
                        message.fallback.topic)
            message = message.fallback
        return await self.fit(message)


async def _stop_quietly(producer: AIOKafkaProducer, partition: int) -> None:
    """Stops a producer that may be fenced or broken (it then refuses a clean stop)."""
    try:
        await producer.stop()
    except Exception as exc:
        log.debug("exactly-once: stopping the producer of partition %d: %r", partition, exc)
