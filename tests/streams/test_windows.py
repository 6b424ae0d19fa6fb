"""WindowBuffer: windows close on pairs or on time, and intake waits at the in-flight bound."""
from __future__ import annotations

import asyncio
import time

from streams.windows import WindowBuffer


def run(coro):
    return asyncio.run(coro)


def test_window_closes_when_pairs_reach_the_bound():
    async def scenario():
        buf = WindowBuffer(max_pairs=10, window_ms=10_000, max_inflight_pairs=1000)
        for i in range(4):
            await buf.put(i, 4)
        started = time.monotonic()
        window = await buf.next_window()
        return [p.item for p in window], time.monotonic() - started, buf.queued

    items, waited, queued = run(scenario())
    assert items == [0, 1], "4+4 fits under 10 pairs, a third request would not"
    assert waited < 1.0, "a full window does not wait for window_ms"
    assert queued == 2


def test_window_closes_after_window_ms_when_not_full():
    async def scenario():
        buf = WindowBuffer(max_pairs=1000, window_ms=150, max_inflight_pairs=1000)
        await buf.put("a", 3)
        started = time.monotonic()
        window = await buf.next_window()
        return [p.item for p in window], time.monotonic() - started

    items, waited = run(scenario())
    assert items == ["a"]
    assert 0.1 <= waited < 1.0


def test_oversized_request_forms_a_window_alone():
    async def scenario():
        buf = WindowBuffer(max_pairs=10, window_ms=0, max_inflight_pairs=1000)
        await buf.put("big", 50)
        await buf.put("small", 1)
        first = await buf.next_window()
        second = await buf.next_window()
        return [p.item for p in first], [p.item for p in second]

    assert run(scenario()) == (["big"], ["small"])


def test_put_waits_at_the_inflight_bound_until_release():
    async def scenario():
        buf = WindowBuffer(max_pairs=100, window_ms=0, max_inflight_pairs=10)
        await buf.put("a", 8)
        blocked = asyncio.ensure_future(buf.put("b", 5))
        await asyncio.sleep(0.1)
        was_blocked = not blocked.done()
        window = await buf.next_window()
        await asyncio.sleep(0.05)
        still_blocked = not blocked.done()  # taking a window does not free room; answering does
        await buf.release(sum(p.pairs for p in window))
        await asyncio.wait_for(blocked, 1)
        return was_blocked, still_blocked, buf.inflight_pairs

    was_blocked, still_blocked, inflight = run(scenario())
    assert was_blocked and still_blocked
    assert inflight == 5
