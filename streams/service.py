"""The rerank service of one worker: its parts, put together.

A request's way through them::

    Kafka event ──take──▶ Intake.read ──▶ Inbox.put ──run_engine──▶ Scorer.run (the scheduler's steps)
                            │ refused                                      │ each answer when ready
                            ▼                                              ▼
                  Answers.rejection ──────────────▶ Delivery.spawn ◀───────┘
                                                    produce, fit, fall back, then ack

At-least-once: the agent's stream does not ack on its own (``noack``); a request is acked once
its answer is delivered and every earlier request of its partition is answered too
(``streams.acks``: the scheduler answers out of order, faust must see acks in order), so
faust's commits stay behind the oldest unanswered request, and a worker that dies mid-request
leaves its requests to be redelivered.
Stopping (``drain``) is ``streams.lifecycle.Drain``. Nothing here knows faust's app beyond
what it is handed: the Faust wiring is ``streams.app``.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from engines import Reranker
from schemas import RequestError, RequestLimits
from streams import metrics
from streams.acks import AckOrder
from streams.answers import Answers, Outbound
from streams.delivery import DELIVERY_ATTEMPTS, Delivery
from streams.inbox import Inbox, Pending
from streams.intake import Inbound, Intake
from streams.lifecycle import Drain
from streams.scoring import Scorer
from streams.settings import WorkerSettings
from streams.topic_metadata import TopicMetadata
from streams.topics import quiet_admin_client
from streams.transactions import TransactionalDelivery

log = logging.getLogger("rerank.worker")


class RerankService:
    """Owns the inbox, the scoring thread and the replies of one worker.

    ``metadata`` answers what delivery asks of the cluster about topics; by default a
    confluent-kafka admin client with the worker's connection settings. ``make_producer``
    builds a transactional producer for a transactional.id (``RERANK_DELIVERY=exactly_once``).
    """

    def __init__(self, app: faust.App, settings: WorkerSettings, reranker: Reranker,
                 metadata: TopicMetadata | None = None,
                 make_producer: Callable[[str], AIOKafkaProducer] | None = None) -> None:
        self.app = app
        self.settings = settings
        self.reranker = reranker
        self.answers = Answers(request_topic=settings.request_topic, response_topic=settings.response_topic,
                               dead_letter_topic=settings.dead_letter_topic, worker=settings.worker_name,
                               model=reranker.model_name, engine=reranker.engine_name)
        self.intake = Intake(reranker, RequestLimits(max_documents=settings.max_documents),
                             {settings.engine_config.model, reranker.model_name, *settings.model_aliases},
                             reply_to_prefix=settings.reply_to_prefix,
                             forbidden_reply_topics=(settings.request_topic, settings.dead_letter_topic))
        self.inbox: Inbox[Inbound] = Inbox(settings.max_inflight_pairs)
        self.scorer = Scorer(reranker, self.answers)
        metadata = metadata or TopicMetadata(lambda: quiet_admin_client(settings.confluent_config()),
                                             producer_limit=int(app.conf.producer_max_request_size))
        self.stream: Any = None
        self.acks = AckOrder()
        self.delivery: Delivery
        if settings.delivery == "exactly_once":
            if make_producer is None:
                raise ValueError("RERANK_DELIVERY=exactly_once needs make_producer (streams.app builds it)")
            self.delivery = TransactionalDelivery(
                make_producer, metadata, self.answers, self.acks, group_id=settings.group_id,
                request_topic=settings.request_topic, interval_s=settings.transaction_interval_ms / 1000,
                ack=self._ack_settled, release=self._release, on_failure=self._undeliverable)
        else:
            self.delivery = Delivery(lambda: app.producer, metadata, self.answers, ack=self._ack,
                                     release=self._release, on_failure=self._undeliverable)
        self.partitions_held = 0
        self.joined = asyncio.Event()
        self.stopping = False
        self._engine_loop: asyncio.Task | None = None
        self._drain = Drain(app, self.inbox, self.delivery, lambda: self._engine_loop)

    async def take(self, stream: Any, event: Any) -> None:
        """One message from the agent: a good request goes to the engine, a bad one is answered
        now."""
        self.stream = stream
        self.acks.taken(event)
        raw: bytes = event.value if event.value is not None else b""
        try:
            inbound = self.intake.read(raw, event)
        except RequestError as err:
            outbound = self.answers.rejection(err, raw, event.key)
            if err.request_id is None:
                metrics.DEAD_LETTERS.inc()
                if outbound[-1].request_id is None:
                    log.warning("dead-lettered an unreadable request with no usable key: %s", err.message)
            self.delivery.spawn(outbound, [event])
            return
        if not await self.inbox.put(inbound, inbound.pairs):
            return  # stopping: left unacked, so it is redelivered
        metrics.INFLIGHT_PAIRS.set(self.inbox.inflight_pairs)

    async def run_engine(self) -> None:
        """Until the inbox is closed and every request taken is answered: the engine's steps,
        each answer handed to delivery the moment its request is done."""
        self._engine_loop = asyncio.current_task()
        await self.scorer.run(self.inbox, self._deliver)

    def _deliver(self, pending: Pending[Inbound], outbound: Outbound) -> None:
        self.delivery.spawn([outbound], [pending.item.event], pending.pairs, pending.item.received)

    async def drain(self, grace_s: float) -> None:
        """Stops in bounded time with nothing lost (``streams.lifecycle.Drain``)."""
        self.stopping = True
        await self._drain(grace_s)

    async def _ack(self, event: Any) -> None:
        """``event`` is answered: ack it, and the later ones of its partition it held back."""
        for ready in self.acks.answered(event):
            await self.stream.ack(ready)

    async def _ack_settled(self, event: Any) -> None:
        """exactly_once: ``event``'s transaction is committed (the offset order was kept before it)."""
        await self.stream.ack(event)

    async def _release(self, pairs: int) -> None:
        await self.inbox.release(pairs)
        metrics.INFLIGHT_PAIRS.set(self.inbox.inflight_pairs)

    async def _undeliverable(self, exc: Exception) -> None:
        if self.stopping:
            log.warning("could not deliver an answer while stopping (%s): left to be redelivered", exc)
            return
        log.critical("could not deliver an answer after %d attempts (%s); stopping so that "
                     "another replica answers it", DELIVERY_ATTEMPTS, exc)
        await self.app.crash(exc)

    def health(self) -> dict[str, Any]:
        return {
            "worker": self.settings.worker_name,
            "stopping": self.stopping,
            "engine": self.reranker.engine_name,
            "model": self.reranker.model_name,
            "joined_group": self.joined.is_set(),
            "partitions": self.partitions_held,
            "queued_requests": self.inbox.queued,
            "inflight_pairs": self.inbox.inflight_pairs,
            "deliveries_in_flight": len(self.delivery.in_flight),
            "unacked_requests": self.acks.open,
        }
