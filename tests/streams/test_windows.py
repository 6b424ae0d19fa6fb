"""WindowBuffer: a free engine never waits for window_ms; windows close on pairs, on a quiet
gap or at window_ms; intake waits at the in-flight bound; close() stops intake.

Timings are real (asyncio), with bounds far from the figures they tell apart."""
from __future__ import annotations

import asyncio
import time

from streams.windows import WindowBuffer


def run(coro):
    return asyncio.run(coro)


async def timed_window(buf: WindowBuffer):
    started = time.monotonic()
    window = await buf.next_window()
    return [p.item for p in window], time.monotonic() - started


def test_window_closes_when_pairs_reach_the_bound():
    async def scenario():
        buf = WindowBuffer(max_pairs=10, window_ms=10_000, max_inflight_pairs=1000, gather_ms=10_000)
        for i in range(4):
            await buf.put(i, 4)
        items, waited = await timed_window(buf)
        return items, waited, buf.queued

    items, waited, queued = run(scenario())
    assert items == [0, 1], "4+4 fits under 10 pairs, a third request would not"
    assert waited < 1.0, "a full window does not wait"
    assert queued == 2


def test_a_lone_request_on_a_free_engine_is_not_held_for_window_ms():
    async def scenario():
        buf = WindowBuffer(max_pairs=1000, window_ms=10_000, max_inflight_pairs=1000)
        await buf.put("a", 3)
        return await timed_window(buf)

    items, waited = run(scenario())
    assert items == ["a"]
    assert waited < 0.5, f"held {waited:.3f} s: a free engine must not wait for window_ms (10 s)"


def test_requests_put_together_share_one_window():
    async def scenario():
        buf = WindowBuffer(max_pairs=1000, window_ms=10_000, max_inflight_pairs=1000)
        for name in "abc":  # one fetch's messages, parsed one after another
            await buf.put(name, 2)
        return await timed_window(buf)

    items, waited = run(scenario())
    assert items == ["a", "b", "c"]
    assert waited < 0.5


def test_a_free_engine_waits_for_a_request_then_takes_the_burst_arriving_with_it():
    async def scenario():
        buf = WindowBuffer(max_pairs=1000, window_ms=10_000, max_inflight_pairs=1000, gather_ms=400)
        taking = asyncio.ensure_future(timed_window(buf))
        await asyncio.sleep(0.05)
        assert not taking.done(), "no request, no window"
        for name in "abc":
            await buf.put(name, 1)
            await asyncio.sleep(0.02)  # well inside the 400 ms quiet gap
        return await taking

    items, waited = run(scenario())
    assert items == ["a", "b", "c"]
    assert waited < 5.0, "closed by the quiet gap, not window_ms (10 s)"


def test_window_ms_bounds_gathering_while_requests_keep_arriving():
    async def scenario():
        buf = WindowBuffer(max_pairs=10_000, window_ms=150, max_inflight_pairs=10_000, gather_ms=150)
        stop = asyncio.Event()

        async def trickle():  # a request every 10 ms: the quiet gap never comes
            i = 0
            while not stop.is_set():
                await buf.put(i, 1)
                i += 1
                await asyncio.sleep(0.01)

        feeder = asyncio.ensure_future(trickle())
        items, waited = await timed_window(buf)
        stop.set()
        await feeder
        return items, waited

    items, waited = run(scenario())
    assert 0.1 <= waited < 1.0, f"closed after {waited:.3f} s; window_ms is 0.15 s"
    assert 1 < len(items) < 100


def test_a_backlog_from_a_busy_engine_forms_the_next_window_at_once():
    async def scenario():
        buf = WindowBuffer(max_pairs=1000, window_ms=300, max_inflight_pairs=1000, gather_ms=300)
        await buf.put("first", 1)
        first = await buf.next_window()
        # the engine scores `first`; meanwhile two requests arrive and wait
        await buf.put("b", 1)
        await buf.put("c", 1)
        await asyncio.sleep(0.35)  # scoring `first` took longer than window_ms
        items, waited = await timed_window(buf)  # the engine is free again
        return [p.item for p in first], items, waited

    first, items, waited = run(scenario())
    assert first == ["first"]
    assert items == ["b", "c"]
    assert waited < 0.1, f"a backlog older than window_ms waited {waited:.3f} s more"


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
        taken = await asyncio.wait_for(blocked, 1)
        return was_blocked, still_blocked, taken, buf.inflight_pairs

    was_blocked, still_blocked, taken, inflight = run(scenario())
    assert was_blocked and still_blocked and taken is True
    assert inflight == 5


def test_close_refuses_new_and_blocked_requests_and_drains_what_is_queued():
    async def scenario():
        buf = WindowBuffer(max_pairs=2, window_ms=10_000, max_inflight_pairs=4)
        await buf.put("a", 2)
        await buf.put("b", 2)
        blocked = asyncio.ensure_future(buf.put("c", 2))  # at the in-flight bound
        await asyncio.sleep(0)
        await buf.close()
        refused_blocked = await asyncio.wait_for(blocked, 1)
        refused_new = await buf.put("d", 1)
        windows = [[p.item for p in await asyncio.wait_for(buf.next_window(), 1)] for _ in range(3)]
        return refused_blocked, refused_new, windows, buf.inflight_pairs

    refused_blocked, refused_new, windows, inflight = run(scenario())
    assert refused_blocked is False and refused_new is False
    assert windows == [["a"], ["b"], []], "queued requests still come out, then an empty window"
    assert inflight == 4, "taken windows stay in flight until released"


def test_drop_queued_abandons_the_queue_and_frees_its_pairs():
    async def scenario():
        buf = WindowBuffer(max_pairs=100, window_ms=10_000, max_inflight_pairs=100)
        for name in "abc":
            await buf.put(name, 3)
        await buf.close()
        dropped = await buf.drop_queued()
        return [p.item for p in dropped], buf.queued, buf.inflight_pairs, await buf.next_window()

    dropped, queued, inflight, window = run(scenario())
    assert dropped == ["a", "b", "c"] and queued == 0 and inflight == 0 and window == []
