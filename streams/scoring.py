"""Scoring: accepted requests in, one answer per request out, each the moment it is ready.

The engine's :class:`~engines.scheduler.Scheduler` decides what runs next at every step (a
first stage, or one micro-batch taken from the pending pairs of every request taken so far, in
its fair order). This loop feeds it: before each step it submits every request that arrived
meanwhile (so a request that arrives while a micro-batch runs can be in the next one), runs the
steps in a thread of its own (the engine is not re-entrant, and two steps at once would only split
the same cores), back to back until one finishes a request or a new one waits, starts the next
steps before it answers, and hands over the answer of each request a step finished:

- ranked, with ``meta.queue_ms`` (receipt to the engine's first work on it), ``inference_ms``
  (from then until its last pair was scored) and ``total_ms``;
- ``deadline_exceeded`` for a request whose ``deadline_ms`` passed before any work on it began
  (it is not scored);
- ``internal`` for the requests of a micro-batch (or first stage) the engine failed on: nothing
  is dropped, and the other requests go on.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from engines import Reranker
from engines.scheduler import Finished, Scheduler, StepResult
from streams import metrics
from streams.answers import Answers, Outbound, Timing
from streams.inbox import Inbox, Pending
from streams.intake import Inbound

log = logging.getLogger("rerank.worker")

Answer = Callable[[Pending[Inbound], Outbound], None]
#: The longest run of steps before the event loop hears of them (their metrics, a stop).
STEPS_FOR_S = 0.25


class Scorer:
    """Runs ``reranker``'s scheduler (in the order of its ``scheduler_policy``) over the requests
    of an inbox."""

    def __init__(self, reranker: Reranker, answers: Answers) -> None:
        self.scheduler = Scheduler(reranker)
        self.answers = answers
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._keys = itertools.count()
        self._live: dict[int, Pending[Inbound]] = {}

    async def run(self, inbox: Inbox[Inbound], answer: Answer) -> None:
        """Until ``inbox`` is closed and every request taken from it is answered."""
        loop = asyncio.get_running_loop()
        arrivals = lambda: inbox.queued > 0  # noqa: E731 (read from the engine's thread)
        running: asyncio.Future | None = None
        while True:
            for pending in await inbox.take(wait=not self._live and running is None):
                self._submit(pending)
            if running is None:
                if not self._live:
                    if inbox.closed:
                        return
                    continue
                running = loop.run_in_executor(self.executor, self._steps, arrivals)
            steps, running = await running, None
            for pending in await inbox.take(wait=False):
                self._submit(pending)
            if self.scheduler.busy:  # the engine goes on while these steps' requests are answered
                running = loop.run_in_executor(self.executor, self._steps, arrivals)
            for step, seconds in steps:
                metrics.observe_step(step, seconds)
                for pending, outbound in self._answers(step):
                    answer(pending, outbound)

    def _steps(self, arrivals: Callable[[], bool]) -> list[tuple[StepResult, float]]:
        """Steps back to back, in the engine's thread, until one has answers, a request waits to
        be submitted, :data:`STEPS_FOR_S` have passed, or nothing is left: the engine does not
        wait for a turn of the event loop (Kafka, parsing, delivery) between micro-batches that
        have nothing to hand over."""
        steps: list[tuple[StepResult, float]] = []
        until = time.monotonic() + STEPS_FOR_S
        while True:
            started = time.monotonic()
            step = self.scheduler.step()
            ended = time.monotonic()
            steps.append((step, ended - started))
            if step.finished or step.failed or step.expired or arrivals() or ended > until or not self.scheduler.busy:
                return steps

    def _submit(self, pending: Pending[Inbound]) -> None:
        request = pending.item.request
        key = next(self._keys)
        self._live[key] = pending
        deadline = None if request.deadline_ms is None else request.deadline_ms / 1000
        self.scheduler.submit(key, pending.item.job, pending.item.plan, priority=request.priority, deadline=deadline)

    def _answers(self, step: StepResult) -> list[tuple[Pending[Inbound], Outbound]]:
        out = []
        for finished in step.finished:
            pending = self._live.pop(finished.key)
            out.append((pending, self._ranked(pending, finished)))
        for key, failure in step.failed:
            pending = self._live.pop(key)
            log.error("the engine failed on request %s: %s: %s", pending.item.request.request_id,
                      type(failure).__name__, failure, exc_info=failure)
            out.append((pending, self.answers.scoring_failed(pending.item.request, failure)))
        for key in step.expired:
            pending = self._live.pop(key)
            out.append((pending, self.answers.deadline_exceeded(pending.item.request, time.time() * 1000)))
        return out

    def _ranked(self, pending: Pending[Inbound], finished: Finished) -> Outbound:
        inbound, outcome = pending.item, finished.outcome
        now = time.monotonic()
        queued_s = max(0.0, now - finished.worked_s - inbound.received)
        metrics.QUEUE_SECONDS.labels(metrics.size_label(pending.pairs)).observe(queued_s)
        metrics.DOCUMENTS.inc(len(inbound.job.documents))
        metrics.PAIRS.inc(int(outcome.cross_encoder_scored))
        timing = Timing(queue_ms=queued_s * 1000, inference_ms=finished.worked_s * 1000,
                        total_ms=(now - inbound.received) * 1000)
        return self.answers.ranked(inbound.request, outcome, timing)
