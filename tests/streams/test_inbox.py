"""Inbox: everything queued is taken before each engine step, a wait only when the engine is idle,
intake waits at the in-flight bound until answers free room, close() stops intake.

Timings are real (asyncio), with bounds far from the figures they tell apart."""
from __future__ import annotations

import asyncio
import time

from streams.inbox import Inbox


def run(coro):
    return asyncio.run(coro)


def test_take_hands_over_everything_queued_oldest_first_without_waiting():
    async def scenario():
        inbox = Inbox(max_inflight_pairs=1000)
        for name in "abc":
            await inbox.put(name, 3)
        started = time.monotonic()
        taken = await inbox.take(wait=False)
        empty = await inbox.take(wait=False)
        return [p.item for p in taken], empty, time.monotonic() - started, inbox.queued

    taken, empty, waited, queued = run(scenario())
    assert taken == ["a", "b", "c"] and empty == [] and waited < 0.5 and queued == 0


def test_take_waits_for_a_request_only_when_asked():
    async def scenario():
        inbox = Inbox(max_inflight_pairs=1000)

        async def later():
            await asyncio.sleep(0.2)
            await inbox.put("late", 1)
        asyncio.ensure_future(later())
        started = time.monotonic()
        taken = await inbox.take(wait=True)
        return [p.item for p in taken], time.monotonic() - started

    taken, waited = run(scenario())
    assert taken == ["late"] and 0.15 < waited < 2.0


def test_put_waits_at_the_inflight_bound_until_release():
    async def scenario():
        inbox = Inbox(max_inflight_pairs=10)
        await inbox.put("a", 8)
        blocked = asyncio.ensure_future(inbox.put("b", 5))
        await asyncio.sleep(0.1)
        was_blocked = not blocked.done()
        taken = await inbox.take(wait=False)
        await asyncio.sleep(0.05)
        still_blocked = not blocked.done()  # taking a request does not free room; answering does
        await inbox.release(sum(p.pairs for p in taken))
        accepted = await asyncio.wait_for(blocked, 1)
        return was_blocked, still_blocked, accepted, inbox.inflight_pairs

    was_blocked, still_blocked, accepted, inflight = run(scenario())
    assert was_blocked and still_blocked and accepted is True
    assert inflight == 5


def test_an_oversized_request_is_let_in_when_nothing_is_in_flight():
    async def scenario():
        inbox = Inbox(max_inflight_pairs=10)
        return await asyncio.wait_for(inbox.put("big", 50), 1), inbox.inflight_pairs

    assert run(scenario()) == (True, 50)


def test_close_refuses_new_and_blocked_requests_and_still_hands_out_what_is_queued():
    async def scenario():
        inbox = Inbox(max_inflight_pairs=4)
        await inbox.put("a", 2)
        await inbox.put("b", 2)
        blocked = asyncio.ensure_future(inbox.put("c", 2))  # at the in-flight bound
        await asyncio.sleep(0)
        await inbox.close()
        refused_blocked = await asyncio.wait_for(blocked, 1)
        refused_new = await inbox.put("d", 1)
        taken = [[p.item for p in await asyncio.wait_for(inbox.take(wait=True), 1)] for _ in range(2)]
        return refused_blocked, refused_new, taken, inbox.inflight_pairs

    refused_blocked, refused_new, taken, inflight = run(scenario())
    assert refused_blocked is False and refused_new is False
    assert taken == [["a", "b"], []], "queued requests still come out, then nothing, without waiting"
    assert inflight == 4, "taken requests stay in flight until released"


def test_drop_queued_abandons_the_queue_and_frees_its_pairs():
    async def scenario():
        inbox = Inbox(max_inflight_pairs=100)
        for name in "abc":
            await inbox.put(name, 3)
        await inbox.close()
        dropped = await inbox.drop_queued()
        return [p.item for p in dropped], inbox.queued, inbox.inflight_pairs, await inbox.take(wait=True)

    dropped, queued, inflight, taken = run(scenario())
    assert dropped == ["a", "b", "c"] and queued == 0 and inflight == 0 and taken == []
