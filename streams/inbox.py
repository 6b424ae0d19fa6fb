"""The inbox: accepted requests on their way to the engine's scheduler, and backpressure.

``Inbox`` sits between the Kafka agent (which ``put``s accepted requests) and the scoring loop
(which ``take``s them between two steps of the engine's scheduler). It knows nothing of Kafka or
engines.

- The scoring loop takes everything queued before each step, so a request that arrives while a
  micro-batch runs can be in the next one; it waits for a request only when the engine has
  nothing else to do.
- Backpressure: ``put`` waits while the pairs taken but not yet answered exceed
  ``max_inflight_pairs`` (one oversized request is still let in when nothing is in flight). The
  agent then stops pulling from faust's stream buffer, faust stops fetching, and the backlog
  stays in Kafka. A request's pairs are ``release``d once its answer is delivered.
- ``close`` (on shutdown): no request is taken any more (``put`` returns False, also to one
  waiting at the in-flight bound); ``take`` still hands out what is queued.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Pending(Generic[T]):
    """One request on its way: the caller's item, the pairs it costs, when it came in."""

    item: T
    pairs: int
    arrived: float = field(default_factory=time.monotonic)


class Inbox(Generic[T]):
    def __init__(self, max_inflight_pairs: int) -> None:
        self.max_inflight_pairs = max_inflight_pairs
        self._queue: deque[Pending[T]] = deque()
        self.inflight_pairs = 0  # queued + taken but not yet released
        self.closed = False
        self._changed = asyncio.Condition()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def put(self, item: T, pairs: int) -> bool:
        """Queues a request; waits while the in-flight bound is reached. False when the inbox is
        closed (the request was not taken)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.closed or self.inflight_pairs == 0
                or self.inflight_pairs + pairs <= self.max_inflight_pairs)
            if self.closed:
                return False
            self._queue.append(Pending(item, pairs))
            self.inflight_pairs += pairs
            self._changed.notify_all()
            return True

    async def take(self, wait: bool) -> list[Pending[T]]:
        """Every queued request, oldest first. With ``wait``, waits for one first (returns empty
        only once the inbox is closed)."""
        async with self._changed:
            if wait:
                await self._changed.wait_for(lambda: bool(self._queue) or self.closed)
            taken = list(self._queue)
            self._queue.clear()
            return taken

    async def release(self, pairs: int) -> None:
        """Frees in-flight room once a request is answered (or abandoned)."""
        async with self._changed:
            self.inflight_pairs -= pairs
            self._changed.notify_all()

    async def close(self) -> None:
        """Takes no more requests; what is queued can still be taken."""
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    async def drop_queued(self) -> list[Pending[T]]:
        """Empties the queue (its requests are abandoned, to be redelivered) and returns them;
        their pairs are released."""
        async with self._changed:
            dropped = list(self._queue)
            self._queue.clear()
            self.inflight_pairs -= sum(p.pairs for p in dropped)
            self._changed.notify_all()
            return dropped
