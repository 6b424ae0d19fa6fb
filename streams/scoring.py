"""Scoring: one window of accepted requests in, one answer per request out.

A request whose ``deadline_ms`` has passed when its window forms is answered
deadline_exceeded without being scored. The others go to the engine together, in one
thread of their own (the engine is not re-entrant, and two windows at once would only split
the same cores), so the event loop keeps taking requests and delivering answers meanwhile.
If the engine fails on a window, every request in it is answered ``internal``: nothing is
dropped.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from engines import Reranker
from streams import metrics
from streams.answers import Answers, Outbound, Timing
from streams.intake import Inbound
from streams.windows import Pending

log = logging.getLogger("rerank.worker")

Answered = tuple[Pending[Inbound], Outbound]


class Scorer:
    """Scores windows with ``reranker``; ``window_max_pairs`` only sizes the fill metric."""

    def __init__(self, reranker: Reranker, answers: Answers, window_max_pairs: int) -> None:
        self.reranker = reranker
        self.answers = answers
        self.window_max_pairs = window_max_pairs
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="engine")

    async def score(self, window: list[Pending[Inbound]]) -> list[Answered]:
        """The answer to every request of ``window``, in window order."""
        formed = time.monotonic()
        now_ms = time.time() * 1000
        live, answered = [], {}
        for k, pending in enumerate(window):
            deadline = pending.item.request.deadline_ms
            if deadline is not None and deadline <= now_ms:
                answered[k] = self.answers.deadline_exceeded(pending.item.request, now_ms)
            else:
                live.append(k)
        if live:
            scored = await self._run([window[k] for k in live], formed)
            answered.update(zip(live, scored))
        return [(pending, answered[k]) for k, pending in enumerate(window)]

    async def _run(self, live: list[Pending[Inbound]], formed: float) -> list[Outbound]:
        jobs = [pending.item.job for pending in live]
        plans = [pending.item.plan for pending in live]
        metrics.WINDOWS.inc()
        metrics.WINDOW_REQUESTS.observe(len(live))
        metrics.WINDOW_FILL.observe(sum(p.pairs for p in live) / self.window_max_pairs)
        started = time.monotonic()
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(self.executor, self.reranker.rerank, jobs, plans)
            if len(outcomes) != len(jobs):
                raise RuntimeError(f"engine returned {len(outcomes)} outcomes for {len(jobs)} requests")
        except Exception as exc:  # the whole window is answered with `internal`, not dropped
            log.exception("scoring a window of %d requests failed", len(jobs))
            return [self.answers.scoring_failed(pending.item.request, exc) for pending in live]
        done = time.monotonic()
        metrics.INFERENCE_SECONDS.observe(done - started)
        out = []
        for pending, outcome in zip(live, outcomes):
            inbound = pending.item
            metrics.QUEUE_SECONDS.observe(formed - inbound.received)
            metrics.DOCUMENTS.inc(len(inbound.job.documents))
            metrics.PAIRS.inc(int(outcome.cross_encoder_scored))
            timing = Timing(queue_ms=(formed - inbound.received) * 1000, inference_ms=(done - started) * 1000,
                            total_ms=(time.monotonic() - inbound.received) * 1000)
            out.append(self.answers.ranked(inbound.request, outcome, timing))
        return out
