"""Stopping a worker in bounded time, and logging a broker outage at a bounded rate.

On SIGTERM (or Ctrl-C) ``RerankWorker`` first lets the service drain (no more fetching,
the requests taken answered while the grace period allows, the rest abandoned unacked,
offsets of the answered ones committed: ``RerankService.drain``), then runs faust's own
stop. ``Watchdog`` ends the process ``RERANK_SHUTDOWN_GRACE_S`` after the signal (or after
a crash set off the stop) if it has not ended by then. A second signal exits at once.

``RepeatLimiter`` lets a repeated warning or error of aiokafka, faust, mode or the worker
through once per ``RERANK_LOG_REPEAT_S`` seconds, with a count of the ones held back: with
the broker away, aiokafka otherwise logs ~50 lines a second for as long as it is away.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NoReturn

import faust

log = logging.getLogger("rerank.shutdown")

#: Loggers whose repeated warnings and errors are rate-limited (prefixes of logger names).
LIMITED_LOGGERS = ("aiokafka", "faust", "mode", "rerank.worker")
#: Exit status when the watchdog ends the process: stopping did not finish in time.
WATCHDOG_EXIT_CODE = 1


class RepeatLimiter(logging.Filter):
    """Lets one record per (logger, level, message template) through every `every_s` seconds;
    the next one let through says how many were held back. Warnings and errors only, of the
    `loggers` prefixes; everything else passes. Put it on handlers (a filter on a logger does
    not see its children's records); a record seen by several handlers is judged once."""

    def __init__(self, every_s: float, loggers: tuple[str, ...] = LIMITED_LOGGERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.loggers = loggers
        self.clock = clock
        self.held_back = 0  # over the process's life
        self._last: dict[tuple[str, int, str], float] = {}
        self._held: Counter[tuple[str, int, str]] = Counter()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        verdict = getattr(record, "_repeat_verdict", None)
        if verdict is None:
            verdict = self._judge(record)
            record._repeat_verdict = verdict
        return verdict

    def _judge(self, record: logging.LogRecord) -> bool:
        if (self.every_s <= 0 or record.levelno not in (logging.WARNING, logging.ERROR)
                or not record.name.startswith(self.loggers)):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every_s:
                self._held[key] += 1
                self.held_back += 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} [{held} more like this in the last {now - last:.0f} s not logged]"
        return True


class Watchdog:
    """Ends the process with os._exit at a deadline, unless it has ended by then.

    Why a thread and os._exit: stopping can block where no timeout of ours reaches. faust's
    stop awaits the broker (commit, producer flush, leaving the group) without a bound; a
    crash while stopping makes mode run a stop that never ends (seen: 20 minutes, until
    SIGKILL); the interpreter's own exit joins the engine thread, which may be mid-window.
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


class RerankWorker(faust.Worker):
    """faust's worker, stopping in bounded time: drain first, then faust's stop, all within
    `grace_s` of the signal (the watchdog sees to it)."""

    def __init__(self, app: faust.App, *, grace_s: float, log_repeat_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.grace_s = grace_s
        self.repeat_limiter = RepeatLimiter(log_repeat_s)
        self.watchdog = Watchdog()

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # mode has just replaced the root handlers with its own: filter those.
        super().on_setup_root_logger(logger, level)
        for handler in logger.handlers:
            handler.addFilter(self.repeat_limiter)

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        if self._signal_stop_time:
            log.warning("%s again while stopping: exiting now", signal.Signals(signum).name)
            self.watchdog.arm(0, f"a second {signal.Signals(signum).name}")
            return
        self.watchdog.arm(self.grace_s, signal.Signals(signum).name)
        super()._schedule_shutdown(signum)

    async def _stop_on_signal(self, signum: signal.Signals) -> None:
        started = time.monotonic()
        log.info("%s: stopping within %.0f s (RERANK_SHUTDOWN_GRACE_S)", signal.Signals(signum).name,
                 self.grace_s)
        await self.app.rerank_service.drain(self.grace_s)
        log.info("stopping: drained in %.1f s; faust stops now", time.monotonic() - started)
        await super()._stop_on_signal(signum)

    def execute_from_commandline(self) -> NoReturn:
        """Runs the worker; once it has stopped, exits at once with its status.

        At once, with os._exit: the interpreter's own exit would then join the engine thread
        (mid-window if answering was cut short) and destroy the librdkafka clients, and both
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
