"""Windows: gathering requests into batches bounded by pairs and by time.

``WindowBuffer`` sits between the Kafka agent (which ``put``s parsed requests) and the
scoring loop (which takes ``next_window``). It knows nothing of Kafka or engines.

- The scoring loop asks for the next window only when the engine is free, so a window never
  waits for a busy engine to be filled: requests that arrived while the engine was busy form
  the next window the moment it is free.
- When the engine is free, a window closes as soon as requests stop arriving: once no new
  request has come for ``gather_ms`` (a millisecond: long enough to catch the requests of one
  fetch, which are parsed one after another), or when it holds ``max_pairs`` (query,
  document) pairs. A lone request is scored about ``gather_ms`` after it arrives.
- ``window_ms`` bounds that gathering while requests keep arriving back to back: no window
  closes later than ``window_ms`` after its first request arrived (counting time the request
  spent waiting for a busy engine, so an old backlog closes at once).
- Backpressure: ``put`` waits while the pairs taken but not yet answered exceed
  ``max_inflight_pairs`` (one oversized request is still let in when nothing is in flight).
  The agent then stops pulling from faust's stream buffer, faust stops fetching, and the
  backlog stays in Kafka.
- ``close`` (on shutdown): no request is taken any more (``put`` returns False, also to one
  waiting at the in-flight bound); ``next_window`` still hands out what is queued, then an
  empty window to say there is nothing left.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

#: How long a window waits for the next request of a burst when the engine is free.
DEFAULT_GATHER_MS = 1.0


@dataclass
class Pending(Generic[T]):
    """One request waiting for a window: the caller's item and the pairs it will cost."""

    item: T
    pairs: int
    arrived: float = field(default_factory=time.monotonic)


class WindowBuffer(Generic[T]):
    def __init__(self, max_pairs: int, window_ms: float, max_inflight_pairs: int,
                 gather_ms: float = DEFAULT_GATHER_MS) -> None:
        self.max_pairs = max_pairs
        self.window_s = window_ms / 1000.0
        self.gather_s = min(gather_ms, window_ms) / 1000.0
        self.max_inflight_pairs = max_inflight_pairs
        self._queue: deque[Pending[T]] = deque()
        self._queued_pairs = 0
        self.inflight_pairs = 0  # queued + windowed but not yet released
        self.closed = False
        self._changed = asyncio.Condition()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def put(self, item: T, pairs: int) -> bool:
        """Queues a request; waits while the in-flight bound is reached. False when the
        buffer is closed (the request was not taken)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.closed or self.inflight_pairs == 0
                or self.inflight_pairs + pairs <= self.max_inflight_pairs)
            if self.closed:
                return False
            self._queue.append(Pending(item, pairs))
            self._queued_pairs += pairs
            self.inflight_pairs += pairs
            self._changed.notify_all()
            return True

    async def next_window(self) -> list[Pending[T]]:
        """Call when the engine is free: waits for a request, gathers the ones arriving with
        it, and returns the window's requests, oldest first. Empty once closed and drained."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._queue) or self.closed)
            if not self._queue:
                return []
            latest = self._queue[0].arrived + self.window_s
            while self._queued_pairs < self.max_pairs and not self.closed:
                quiet_until = min(self._queue[-1].arrived + self.gather_s, latest)
                remaining = quiet_until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
            window: list[Pending[T]] = []
            pairs = 0
            # Always at least one request, even one larger than max_pairs on its own.
            while self._queue and (not window or pairs + self._queue[0].pairs <= self.max_pairs):
                pending = self._queue.popleft()
                pairs += pending.pairs
                window.append(pending)
            self._queued_pairs -= pairs
            return window

    async def release(self, pairs: int) -> None:
        """Frees in-flight room once a window's requests are answered (or abandoned)."""
        async with self._changed:
            self.inflight_pairs -= pairs
            self._changed.notify_all()

    async def close(self) -> None:
        """Takes no more requests; what is queued can still be taken as windows."""
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    async def drop_queued(self) -> list[Pending[T]]:
        """Empties the queue (its requests are abandoned, to be redelivered) and returns them;
        their pairs are released."""
        async with self._changed:
            dropped = list(self._queue)
            self._queue.clear()
            freed = sum(p.pairs for p in dropped)
            self._queued_pairs -= freed
            self.inflight_pairs -= freed
            self._changed.notify_all()
            return dropped
