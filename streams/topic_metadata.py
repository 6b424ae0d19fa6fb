"""What the worker asks the cluster about a topic before it writes there.

Producing to a missing topic makes aiokafka wait for its metadata without end, so a
``reply_to`` topic is looked up first; and a record larger than a topic's
``max.message.bytes`` is refused for good (see ``streams.delivery``), so each topic's limit
is read once a minute. Both are asked through a confluent-kafka admin client, off the event
loop, and cached; a failed look-up keeps what was known.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka.admin import ConfigResource, ResourceType

log = logging.getLogger("rerank.worker")

#: How long a "this topic does not exist" answer is trusted before asking again.
TOPIC_LIST_TTL_S = 5.0
#: How long a topic's max.message.bytes is trusted before asking the broker again.
TOPIC_LIMIT_TTL_S = 60.0
#: After a failed max.message.bytes look-up, how soon to ask again.
RETRY_AFTER_S = 5.0


class TopicMetadata:
    """Cached answers to "does this topic exist?" and "how large a record does it take?".

    ``admin`` makes the admin client on first use (anything with confluent-kafka's
    ``list_topics`` and ``describe_configs``); ``producer_limit`` is the producer's own
    max_request_size, which bounds every topic's limit.
    """

    def __init__(self, admin: Callable[[], Any], producer_limit: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._make_admin = admin
        self._admin: Any = None
        self.producer_limit = producer_limit
        self.clock = clock
        self._known_topics: set[str] = set()
        self._topics_listed_at: float | None = None
        self._limits: dict[str, tuple[float, int | None]] = {}
        self._limits_lock = asyncio.Lock()

    def _client(self) -> Any:
        if self._admin is None:
            self._admin = self._make_admin()
        return self._admin

    async def exists(self, topic: str) -> bool:
        """Whether ``topic`` exists; a topic seen once is trusted, a missing one is asked
        about again after TOPIC_LIST_TTL_S."""
        if topic in self._known_topics:
            return True
        if self._topics_listed_at is None or self.clock() - self._topics_listed_at > TOPIC_LIST_TTL_S:
            try:
                admin = self._client()
                metadata = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: admin.list_topics(timeout=10))
                self._known_topics = set(metadata.topics)
                self._topics_listed_at = self.clock()
            except Exception as exc:
                log.warning("could not list topics to check a reply_to topic: %s", exc)
        return topic in self._known_topics

    async def max_message_bytes(self, topic: str) -> int:
        """The largest record this worker can write to ``topic``: the topic's
        max.message.bytes (asked of the broker, cached) and the producer's own limit."""
        topic_limit = await self._topic_limit(topic)
        return min(self.producer_limit, topic_limit) if topic_limit else self.producer_limit

    async def _topic_limit(self, topic: str) -> int | None:
        if not self._stale(topic):
            return self._limits[topic][1]
        async with self._limits_lock:  # one look-up at a time, not one per answer
            if self._stale(topic):
                await self._describe(topic)
        return self._limits[topic][1]

    def _stale(self, topic: str) -> bool:
        checked_at = self._limits.get(topic, (None, None))[0]
        return checked_at is None or self.clock() - checked_at > TOPIC_LIMIT_TTL_S

    async def _describe(self, topic: str) -> None:
        known = self._limits.get(topic, (None, None))[1]
        admin = self._client()

        def describe() -> int:
            (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)],
                                               request_timeout=10).values()
            return int(future.result(timeout=10)["max.message.bytes"].value)
        try:
            self._limits[topic] = (self.clock(), await asyncio.get_running_loop().run_in_executor(None, describe))
        except Exception as exc:
            # Broker busy or down: keep what was known (or the producer's limit) and ask
            # again in a few seconds rather than for every answer.
            log.warning("could not read max.message.bytes of %s: %s", topic, exc)
            self._limits[topic] = (self.clock() - TOPIC_LIMIT_TTL_S + RETRY_AFTER_S, known)
