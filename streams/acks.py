"""Acks in offset order: a request is acked once it and every earlier request of its partition
are answered.

The engine's scheduler answers requests out of order (a small request overtakes a large one),
but faust 0.15.3 commits "the first run of consecutive acked offsets" without checking that
the run starts right after the committed offset when that offset is 0, and lets one unacked
offset slip when it is not (``Consumer._new_offset``). With out-of-order acks it committed
past requests still being scored, and a worker stopped then lost them (found by
``tests/streams/test_shutdown.py``: 3 of 17 lost). Handing faust its acks in offset order keeps
every commit behind the oldest unanswered request of its partition: at least once, as before.

A request answered early waits here for the ones before it (a crash then redelivers it: a
duplicate, never a loss).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any


def position(event: Any) -> tuple[Any, int]:
    """A Kafka event's partition and offset."""
    return event.message.tp, event.message.offset


class AckOrder:
    """Which taken events may be acked now, per partition in offset order."""

    def __init__(self) -> None:
        # per partition: offset -> [event, answered], in the order taken (= offset order)
        self._open: dict[Any, OrderedDict[int, list]] = {}

    def taken(self, event: Any) -> None:
        """Call for every event in the order the stream hands them over."""
        tp, offset = position(event)
        entries = self._open.setdefault(tp, OrderedDict())
        if entries and offset <= next(reversed(entries)):
            # Redelivered from an older offset (a rebalance gave the partition back): what was
            # open is redelivered too, so the old entries are dropped rather than acked.
            entries.clear()
        entries[offset] = [event, False]

    def answered(self, event: Any) -> list[Any]:
        """Marks ``event`` answered; returns the events that may be acked now, in offset order
        (none while an earlier request of its partition is unanswered)."""
        tp, offset = position(event)
        entries = self._open.get(tp)
        entry = entries.get(offset) if entries is not None else None
        if entry is None or entry[0] is not event:
            return []  # dropped since (see taken): it will be redelivered
        entry[1] = True
        ready = []
        while entries:
            first = next(iter(entries.values()))
            if not first[1]:
                break
            ready.append(first[0])
            entries.popitem(last=False)
        return ready

    def holds(self, event: Any) -> bool:
        """Whether ``event`` is taken and not yet released by ``answered`` (nor dropped by a
        redelivery)."""
        tp, offset = position(event)
        entry = self._open.get(tp, {}).get(offset)
        return entry is not None and entry[0] is event

    @property
    def open(self) -> int:
        """Events taken and not yet acked, over every partition."""
        return sum(len(entries) for entries in self._open.values())
