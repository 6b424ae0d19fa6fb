"""Running worker processes on this machine for the demo, load tests and tests.

A worker here is exactly what ``make worker`` runs: ``python -m streams worker`` with its
settings in the environment.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from loadgen.cluster.local_kafka import REPO, free_port


def worker_topics(prefix: str, tag: str | None = None) -> dict[str, str]:
    """RERANK_* settings naming a request, response and dead-letter topic and a consumer group of
    their own (``<prefix>-req-<tag>``, ...; ``tag`` random unless given), so runs never share them."""
    tag = tag or uuid.uuid4().hex[:8]
    return {"RERANK_REQUEST_TOPIC": f"{prefix}-req-{tag}", "RERANK_RESPONSE_TOPIC": f"{prefix}-resp-{tag}",
            "RERANK_DEAD_LETTER_TOPIC": f"{prefix}-dlq-{tag}", "RERANK_GROUP_ID": f"{prefix}-{tag}"}


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, name: str = "worker") -> None:
        self.port = free_port()
        self.name = name
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false", "RERANK_HTTP_PORT": str(self.port),
                    "RERANK_WORKER_NAME": name, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams", "worker"], env=self.env, cwd=REPO,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def status(self, path: str = "/ready") -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return json.loads(resp.read())
        except Exception:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def wait_ready(self, timeout_s: float = 180.0) -> "WorkerProcess":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            state = self.status()
            if state and state.get("ready"):
                return self
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout_s}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """Resident memory of the worker process (from /proc, Linux)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def kill(self) -> None:
        """SIGKILL: no goodbye, no commit: what a crash or an OOM kill does."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait: the worker answers what it has taken, flushes and commits first."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def partitions_held(worker: WorkerProcess) -> int:
    """How many request partitions ``worker`` holds, as its /healthz says (0 if it does not answer)."""
    state = worker.status("/healthz") or {}
    return int(state.get("partitions", 0))


def wait_split(workers: list[WorkerProcess], partitions: int, timeout_s: float = 90.0) -> list[int]:
    """Waits until every worker holds partitions and together they hold all ``partitions``."""
    deadline = time.monotonic() + timeout_s
    held: list[int] = []
    while time.monotonic() < deadline:
        held = [partitions_held(w) for w in workers]
        if all(held) and sum(held) == partitions:
            return held
        time.sleep(0.3)
    raise AssertionError(f"partitions not split across {[w.name for w in workers]} after {timeout_s}s: {held}")
