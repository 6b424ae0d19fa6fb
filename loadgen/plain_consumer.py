"""A second, deliberately plain reader of the answers: the check of loadgen's instrument.

It runs in a process of its own (no GIL, no threads or locks shared with loadgen), reads
the response topics with nothing but a confluent-kafka ``Consumer`` polled one message
at a time, and records when each request_id's first answer arrived (``time.monotonic()``,
which on Linux and macOS is one clock for every process of the machine). loadgen then
compares those arrivals with its own: a client that batched its reads, or stamped answers
late, would show here as a gap.

    checker = PlainConsumer(bootstrap, ["rerank-responses"])   # before the first request
    ...                                                        # the run
    arrivals = checker.collect(answered_ids)                   # {request_id: monotonic}

Run as ``python -m loadgen.plain_consumer``, it talks JSON lines: reads its configuration
(bootstrap, topics, extra client settings) from stdin, assigns each partition at its end
and prints ``{"ready": true}``; then polls until a line ``{"expect": [ids], "timeout_s":
s}`` comes and every expected id has arrived (or the timeout), and prints ``{"arrivals":
{id: t}}``. Configuration comes on stdin so that no credential shows in a process list.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

POLL_TIMEOUT_S = 0.1
# the directory that holds the loadgen package, for the child's imports wherever we run from
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _serve() -> int:
    config = json.loads(sys.stdin.readline())
    consumer = Consumer({"bootstrap.servers": config["bootstrap"], "group.id": f"plain-check-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, **config.get("extra_config", {})})
    metadata = consumer.list_topics(timeout=15)
    partitions = []
    for topic in config["topics"]:
        for p in metadata.topics[topic].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            partitions.append(TopicPartition(topic, p, high))
    consumer.assign(partitions)
    arrivals: dict[str, float] = {}

    def poll_once() -> None:
        msg = consumer.poll(POLL_TIMEOUT_S)
        if msg is None:
            return
        now = time.monotonic()  # first thing: nothing done with the message is counted
        if msg.error() or msg.key() is None:
            return
        # the worker keys every answer by its request_id
        arrivals.setdefault(msg.key().decode("utf-8", "replace"), now)

    poll_once()  # starts fetching from the assigned offsets before the first request goes out
    print(json.dumps({"ready": True}), flush=True)

    expectation: list[dict] = []
    reader = threading.Thread(target=lambda: expectation.append(json.loads(sys.stdin.readline() or "{}")),
                              daemon=True)
    reader.start()
    while not expectation:
        poll_once()
    expected = set(expectation[0].get("expect", []))
    deadline = time.monotonic() + float(expectation[0].get("timeout_s", 10.0))
    while not expected <= arrivals.keys() and time.monotonic() < deadline:
        poll_once()
    consumer.close()
    print(json.dumps({"arrivals": {rid: arrivals[rid] for rid in expected if rid in arrivals}}), flush=True)
    return 0


class PlainConsumer:
    """Starts the plain reader in its own process; ready (assigned) when the constructor returns."""

    def __init__(self, bootstrap: str, topics: list[str], extra_config: dict | None = None,
                 ready_timeout_s: float = 60.0) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "loadgen.plain_consumer"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.proc.stdin.write(json.dumps({"bootstrap": bootstrap, "topics": topics,
                                          "extra_config": extra_config or {}}) + "\n")
        self.proc.stdin.flush()
        line = self._read_line(ready_timeout_s)
        if not line or not json.loads(line).get("ready"):
            self.close()
            raise RuntimeError(f"the plain consumer did not start (exit {self.proc.poll()}): {line!r}")

    def _read_line(self, timeout_s: float) -> str:
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        return got[0] if got else ""

    def collect(self, request_ids: list[str], timeout_s: float = 10.0) -> dict[str, float]:
        """The arrival time (time.monotonic) of each of these request_ids' first answer
        that the plain reader saw, waiting up to `timeout_s` for the last ones."""
        self.proc.stdin.write(json.dumps({"expect": list(request_ids), "timeout_s": timeout_s}) + "\n")
        self.proc.stdin.flush()
        line = self._read_line(timeout_s + 30)
        self.close()
        if not line:
            raise RuntimeError(f"the plain consumer sent no arrivals (exit {self.proc.poll()})")
        return json.loads(line)["arrivals"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> "PlainConsumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(_serve())
