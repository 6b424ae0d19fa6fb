"""Stopping a worker in bounded time, with nothing lost.

On SIGTERM (or Ctrl-C) ``RerankWorker`` first lets the worker drain (``Drain``: no more
fetching, the requests taken answered while the grace period allows, the rest abandoned
unacked, the offsets of the answered ones committed), then runs faust's own stop.
``Watchdog`` ends the process ``RERANK_SHUTDOWN_GRACE_S`` after the signal (or after a crash
set off the stop) if it has not ended by then. A second signal exits at once. Whatever is
not answered by then stays uncommitted and is redelivered to the partition's next owner.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import faust

from streams import metrics
from streams.delivery import Delivery
from streams.faust_adapter import DrainingWorker, stop_fetching
from streams.logs import RepeatLimiter
from streams.inbox import Inbox

log = logging.getLogger("rerank.shutdown")

#: Exit status when the watchdog ends the process: stopping did not finish in time.
WATCHDOG_EXIT_CODE = 1
#: Of the shutdown grace period, the last this many seconds (at most half of it) are kept
#: for committing offsets and faust's own stop; answering stops before them.
DRAIN_RESERVE_S = 8.0


class Drain:
    """Stops one worker's intake and settles what it took.

    ``engine_loop`` is the task running the engine's steps (it returns once the closed inbox is
    empty and every request taken is answered); ``delivery`` holds the answers on their way out.
    """

    def __init__(self, app: faust.App, inbox: Inbox, delivery: Delivery,
                 engine_loop: Callable[[], asyncio.Task | None]) -> None:
        self.app = app
        self.inbox = inbox
        self.delivery = delivery
        self._engine_loop = engine_loop

    async def __call__(self, grace_s: float) -> None:
        """Stops taking requests, answers the ones taken for as long as ``grace_s`` allows
        (keeping time to commit and for faust to stop), abandons the rest unacked, and commits
        the offsets of what was answered. Never raises; never waits past its share of grace_s."""
        started = time.monotonic()
        reserve = min(DRAIN_RESERVE_S, grace_s / 2)  # for the commit and faust's own stop
        await self.inbox.close()
        try:
            stop_fetching(self.app)
        except Exception as exc:  # not started yet, or already stopped
            log.warning("stopping: could not pause fetching: %r", exc)
        log.info("stopping: taking no more requests; answering the %d pairs taken (%d requests not yet "
                 "at the engine) within %.0f s", self.inbox.inflight_pairs, self.inbox.queued, grace_s - reserve)
        try:
            await asyncio.wait_for(self._all_answered(), max(0.0, grace_s - reserve))
            log.info("stopping: every request taken is answered (%.1f s)", time.monotonic() - started)
        except TimeoutError:
            await self._abandon()
        await self._commit(reserve / 2)
        try:
            await asyncio.wait_for(self.delivery.close(), reserve / 4)
        except Exception as exc:  # TimeoutError included: a transaction left open is aborted by the broker
            log.warning("stopping: could not close the transactional producers cleanly: %r", exc)
        # faust would otherwise wait, without end, for the abandoned requests to be acked.
        self.app.conf.stream_wait_empty = False

    async def _all_answered(self) -> None:
        loop = self._engine_loop()
        if loop is not None:  # it returns once the closed inbox is drained and all is answered
            await asyncio.wait([loop])
        await self.delivery.wait()

    async def _abandon(self) -> None:
        dropped = await self.inbox.drop_queued()
        loop = self._engine_loop()
        scoring = loop is not None and not loop.done()
        if scoring:
            loop.cancel()
        undelivered = await self.delivery.cancel()
        log.warning("stopping: grace period over; abandoned %d queued requests, %s and %d answers "
                    "not yet delivered: they stay unacked and are redelivered", len(dropped),
                    "the requests at the engine" if scoring else "nothing at the engine", undelivered)
        metrics.INFLIGHT_PAIRS.set(self.inbox.inflight_pairs)

    async def _commit(self, timeout_s: float) -> None:
        try:
            if await asyncio.wait_for(self.app.consumer.commit(), timeout_s):
                log.info("stopping: committed the offsets of the answered requests")
            else:  # faust commits every second: usually nothing is left
                log.info("stopping: no offsets left to commit (or the commit failed: see above)")
        except Exception as exc:  # TimeoutError included: the broker is away
            log.warning("stopping: could not commit (%s); requests answered since the last commit "
                        "will be answered again (at least once)", exc or type(exc).__name__)


class Watchdog:
    """Ends the process with os._exit at a deadline, unless it has ended by then.

    Why a thread and os._exit: stopping can block where no timeout of ours reaches. faust's
    stop awaits the broker (commit, producer flush, leaving the group) without a bound; a
    crash while stopping makes mode run a stop that never ends (seen: 20 minutes, until
    SIGKILL); the interpreter's own exit joins the engine thread, which may be mid-step.
    A thread outside the event loop still runs then, and os._exit skips the exit handlers
    that would block. Nothing is lost by it: what was committed stays committed, and every
    request not committed is redelivered (at least once).
    """

    def __init__(self, exit_code: int = WATCHDOG_EXIT_CODE, clock: Callable[[], float] = time.monotonic,
                 exit: Callable[[int], Any] = os._exit) -> None:
        self.exit_code = exit_code
        self.clock = clock
        self._exit = exit
        self._deadline: float | None = None
        self._reason = ""
        self._since = 0.0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def armed(self) -> bool:
        return self._deadline is not None

    def arm(self, seconds: float, reason: str) -> None:
        """Exit `seconds` from now; an earlier deadline already set stays."""
        with self._changed:
            deadline = self.clock() + max(0.0, seconds)
            if self._deadline is None or deadline < self._deadline:
                self._deadline, self._reason, self._since = deadline, reason, self.clock()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shutdown-watchdog", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def _run(self) -> None:
        with self._changed:
            while (remaining := self._deadline - self.clock()) > 0:
                self._changed.wait(remaining)
            reason, since = self._reason, self._since
        log.critical("still running %.1f s after %s: exiting now (status %d); requests not committed "
                     "are redelivered", self.clock() - since, reason, self.exit_code)
        flush_logs()
        self._exit(self.exit_code)


def flush_logs() -> None:
    """What the interpreter's exit would flush, for an exit that skips it (os._exit)."""
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


class RerankWorker(DrainingWorker):
    """faust's worker, stopping in bounded time: ``drain`` first, then faust's stop, all
    within ``grace_s`` of the signal (the watchdog sees to it)."""

    def __init__(self, app: faust.App, *, drain: Callable[[float], Any], grace_s: float, log_repeat_s: float,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.drain = drain
        self.grace_s = grace_s
        self.repeat_limiter = RepeatLimiter(log_repeat_s)
        self.watchdog = Watchdog()

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # mode has just replaced the root handlers with its own: filter those.
        super().on_setup_root_logger(logger, level)
        for handler in logger.handlers:
            handler.addFilter(self.repeat_limiter)

    def on_stop_signal(self, signum: signal.Signals) -> None:
        self.watchdog.arm(self.grace_s, signal.Signals(signum).name)

    def on_repeated_signal(self, signum: signal.Signals) -> None:
        log.warning("%s again while stopping: exiting now", signal.Signals(signum).name)
        self.watchdog.arm(0, f"a second {signal.Signals(signum).name}")

    async def before_stop(self, signum: signal.Signals) -> None:
        started = time.monotonic()
        log.info("%s: stopping within %.0f s (RERANK_SHUTDOWN_GRACE_S)", signal.Signals(signum).name,
                 self.grace_s)
        await self.drain(self.grace_s)
        log.info("stopping: drained in %.1f s; faust stops now", time.monotonic() - started)

    def execute_from_commandline(self) -> NoReturn:
        """Runs the worker; once it has stopped, exits at once with its status.

        At once, with os._exit: the interpreter's own exit would then join the engine thread
        (mid-step if answering was cut short) and destroy the librdkafka clients, and both
        can block for seconds; once the interpreter is finalizing, the watchdog's daemon
        thread gets no time to end it (seen: exit 0 seconds after the grace period)."""
        try:
            super().execute_from_commandline()
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            log.exception("the worker stopped on an error")
            status = 1
        log.info("exiting with status %d", status)
        flush_logs()
        os._exit(status)

    def on_worker_shutdown(self) -> None:
        # Reached after a signal's stop, and also after a crash, which no signal armed the
        # watchdog for: mode's stop after a crash can wait for the broker forever.
        self.watchdog.arm(self.grace_s, "the worker began to stop")
        self.app.conf.stream_wait_empty = False
        super().on_worker_shutdown()
