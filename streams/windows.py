"""Windows: gathering requests into batches bounded by pairs and by time.

``WindowBuffer`` sits between the Kafka agent (which ``put``s parsed requests) and the
scoring loop (which takes ``next_window``). It knows nothing of Kafka or engines.

- A window closes when it holds ``max_pairs`` (query, document) pairs, or ``window_ms``
  after its first request arrived, whichever comes first. While the engine scores one
  window, the next fills up, so a busy worker closes full windows at once and an idle one
  answers a lone request after at most ``window_ms``.
- Backpressure: ``put`` waits while the pairs taken but not yet answered exceed
  ``max_inflight_pairs`` (one oversized request is still let in when nothing is in flight).
  The agent then stops pulling from faust's stream buffer, faust stops fetching, and the
  backlog stays in Kafka.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Pending(Generic[T]):
    """One request waiting for a window: the caller's item and the pairs it will cost."""

    item: T
    pairs: int
    arrived: float = field(default_factory=time.monotonic)


class WindowBuffer(Generic[T]):
    def __init__(self, max_pairs: int, window_ms: float, max_inflight_pairs: int) -> None:
        self.max_pairs = max_pairs
        self.window_s = window_ms / 1000.0
        self.max_inflight_pairs = max_inflight_pairs
        self._queue: deque[Pending[T]] = deque()
        self._queued_pairs = 0
        self.inflight_pairs = 0  # queued + windowed but not yet released
        self._changed = asyncio.Condition()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def put(self, item: T, pairs: int) -> None:
        """Queues a request; waits while the in-flight bound is reached."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.inflight_pairs == 0 or self.inflight_pairs + pairs <= self.max_inflight_pairs)
            self._queue.append(Pending(item, pairs))
            self._queued_pairs += pairs
            self.inflight_pairs += pairs
            self._changed.notify_all()

    async def next_window(self) -> list[Pending[T]]:
        """Waits for a window to close and returns its requests, oldest first."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._queue))
            deadline = self._queue[0].arrived + self.window_s
            while self._queued_pairs < self.max_pairs:
                remaining = deadline - time.monotonic()
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
        """Frees in-flight room once a window's requests are answered."""
        async with self._changed:
            self.inflight_pairs -= pairs
            self._changed.notify_all()
