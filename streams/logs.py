"""The worker's log filters: a broker outage logged at a bounded rate, and no SASL secrets.

``RepeatLimiter`` lets a repeated warning or error of aiokafka, faust, mode or the worker
through once per ``RERANK_LOG_REPEAT_S`` seconds, with a count of the ones held back: with
the broker away, aiokafka otherwise logs ~50 lines a second for as long as it is away.
``NoSaslFrames`` drops aiokafka's debug records of SASL frames, which carry the password.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable

#: Loggers whose repeated warnings and errors are rate-limited (prefixes of logger names).
LIMITED_LOGGERS = ("aiokafka", "faust", "mode", "rerank.worker")

#: The broker a message is about, as aiokafka writes it: "node with id 2", "node 2",
#: "from 2" / "to 2" (the fetcher and the sender), or a "host:port" it could not reach.
_BROKER_IN_MESSAGE = re.compile(r'\bnode (?:with id )?(\d+)|\b(?:from|to) (\d+)\b|"?([\w.-]+:\d+)"?')


def broker_named(message: str) -> str | None:
    """The broker (node id or host:port) a log message names first, or None."""
    found = _BROKER_IN_MESSAGE.search(message)
    return next((group for group in found.groups() if group), None) if found else None


class RepeatLimiter(logging.Filter):
    """Lets one record per (logger, level, message template, broker) through every `every_s`
    seconds; the next one let through says how many were held back. The broker (``broker_named``)
    is part of the key so that, with two brokers away in a cluster, each one's "Unable connect to
    node with id N" gets through rather than only the first one's. Warnings and errors only, of the
    `loggers` prefixes; everything else passes. Put it on handlers (a filter on a logger does
    not see its children's records); a record seen by several handlers is judged once."""

    def __init__(self, every_s: float, loggers: tuple[str, ...] = LIMITED_LOGGERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.loggers = loggers
        self.clock = clock
        self.held_back = 0  # over the process's life
        self._last: dict[tuple[str, int, str, str | None], float] = {}
        self._held: Counter[tuple[str, int, str, str | None]] = Counter()
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
        try:
            broker = broker_named(record.getMessage())
        except Exception:  # arguments that do not fit the template: logging reports that itself
            broker = None
        key = (record.name, record.levelno, str(record.msg), broker)
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


class NoSaslFrames(logging.Filter):
    """aiokafka logs every request and response at debug level, SASL ones included: with
    SASL/PLAIN that request carries the password in clear (b'\\x00user\\x00password'), with
    SCRAM the proof. Found by tests/streams/test_security.py; such records are dropped at any
    level."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(type(arg).__name__.startswith("SaslAuthenticate") for arg in args)


def keep_sasl_frames_out_of_logs() -> None:
    """On aiokafka's connection logger itself, so that the filter holds whatever handlers
    faust and mode install later."""
    logger = logging.getLogger("aiokafka.conn")
    if not any(isinstance(f, NoSaslFrames) for f in logger.filters):
        logger.addFilter(NoSaslFrames())
