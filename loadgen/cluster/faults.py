"""Faults to inject into a real Kafka for the fault tests and the soak: a broker that can be
stopped and started again with its data, topic configs to flip, and a steady load with a
tally of what was sent and answered.

Nothing here mocks Kafka: the broker is the Maven-resolved Apache Kafka that
``deploy/kafka/kafka.sh`` starts.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from engines.corpus import load_passages, queries
from loadgen.client import RerankClient
from loadgen.cluster.local_kafka import KAFKA_SH, REPO, free_port

READY_PY = REPO / "deploy" / "kafka" / "ready.py"


class RestartableBroker:
    """A single-node broker of its own (port and state folder) that can go down and come
    back with its data: what a broker restart (rolling upgrade, crash, host reboot) does.

    ``kafka.sh up`` starts it (fresh storage). ``stop`` SIGTERMs the JVM and waits, keeping
    the data; ``start`` runs the very command line kafka.sh ran (read back from /proc), so
    the broker comes back on the same port, with the same node id, cluster id, topics and
    committed offsets. ``down`` is ``kafka.sh down`` (stop and remove the data).
    """

    def __init__(self, port: int | None = None, state_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.state = Path(state_dir or tempfile.mkdtemp(prefix=f"kafka-{self.port}-"))
        self.env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_STATE_DIR": str(self.state)}
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._argv: list[str] | None = None
        self._cwd: str | None = None
        self.restarts = 0

    @property
    def pidfile(self) -> Path:
        return self.state / "kafka.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def up(self) -> str:
        done = subprocess.run(["bash", str(KAFKA_SH), "up"], env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"broker on port {self.port} did not start:\n{done.stderr}")
        pid = self.pid()
        if pid is None:
            raise RuntimeError(f"kafka.sh up succeeded but {self.pidfile} names no live process")
        # The JVM's own command line, so that a restart is exactly the same broker.
        self._argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        self._cwd = os.readlink(f"/proc/{pid}/cwd")
        return self.bootstrap

    def stop(self, timeout_s: float = 60.0) -> float:
        """SIGTERM (a controlled shutdown), wait for the JVM to exit; the data stays.
        Returns the seconds it took."""
        pid = self.pid()
        if pid is None:
            raise RuntimeError(f"no broker running on port {self.port}")
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        while time.monotonic() - started < timeout_s:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return time.monotonic() - started
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        raise RuntimeError(f"broker {pid} ignored SIGTERM for {timeout_s}s (killed)")

    def start(self, timeout_s: float = 90.0) -> float:
        """Starts the stopped broker again from its kept data; returns the seconds until a
        metadata request succeeds."""
        if self._argv is None:
            raise RuntimeError("start() restarts a broker that up() started")
        if self.pid() is not None:
            raise RuntimeError(f"broker on port {self.port} is still running")
        started = time.monotonic()
        log = open(self.state / "logs" / f"stdout-restart-{self.restarts + 1}.log", "ab")
        proc = subprocess.Popen(self._argv, cwd=self._cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.pidfile.write_text(f"{proc.pid}\n")
        ready = subprocess.run([sys.executable, str(READY_PY), self.bootstrap, str(timeout_s), str(proc.pid)],
                               capture_output=True, text=True)
        if ready.returncode != 0:
            raise RuntimeError(f"restarted broker not ready: {ready.stderr}")
        self.restarts += 1
        return time.monotonic() - started

    def add_listener(self, name: str, advertised_port: int) -> int:
        """While stopped: adds a PLAINTEXT listener `name` on a new port that advertises
        127.0.0.1:`advertised_port` (where a proxy in front of it listens). Clients that
        bootstrap through the proxy then stay on it; others keep the direct listener.
        Returns the new listener's own port."""
        if self.pid() is not None:
            raise RuntimeError("add_listener() edits server.properties of a stopped broker")
        port = free_port()
        config = self.state / "server.properties"
        lines = []
        for line in config.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "listeners":
                line = f"{line},{name}://127.0.0.1:{port}"
            elif key == "advertised.listeners":
                line = f"{line},{name}://127.0.0.1:{advertised_port}"
            elif key == "listener.security.protocol.map":
                line = f"{line},{name}:PLAINTEXT"
            lines.append(line)
        config.write_text("\n".join(lines) + "\n")
        return port

    def down(self) -> None:
        subprocess.run(["bash", str(KAFKA_SH), "down"], env=self.env, capture_output=True, text=True)

    def __enter__(self) -> "RestartableBroker":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()


class AckCutter:
    """A TCP proxy in front of a broker listener. While armed, it forwards every Produce
    request to the broker and then cuts the connection before the broker's response gets
    back: the records are written, the acknowledgement is lost. That is the failure the
    idempotent producer's retries are for; without idempotence each retry of such a
    request would write the records a second time.

    Only the Kafka framing is read (a 4-byte size, then the api key of each request);
    everything else is copied as it is.
    """

    PRODUCE = 0

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.armed = threading.Event()
        self.cuts = 0
        self.connections = 0
        self._loop = None
        self._server = None
        self._thread = threading.Thread(target=self._run, name="ack-cutter", daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self._started.set()
        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        cut = False

        async def downstream() -> None:  # broker -> client, unless the connection is being cut
            try:
                while data := await up_reader.read(65536):
                    if cut:
                        break
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        pump = asyncio.ensure_future(downstream())
        try:
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(head, "big", signed=True))
                api_key = int.from_bytes(body[:2], "big", signed=True)
                if api_key == self.PRODUCE and self.armed.is_set():
                    cut = True  # set before forwarding, so its response is never relayed
                    up_writer.write(head + body)
                    await up_writer.drain()
                    await asyncio.sleep(0.5)  # the broker reads and writes the records
                    self.cuts += 1
                    break
                up_writer.write(head + body)
                await up_writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            up_writer.close()
            writer.close()
            pump.cancel()

    def start(self) -> "AckCutter":
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> "AckCutter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def set_topic_config(bootstrap: str, topic: str, name: str, value: str | None, timeout_s: float = 30.0) -> None:
    """Sets (or, with None, deletes back to the default) one topic config on the broker."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    resource = ConfigResource(ResourceType.TOPIC, topic,
                              incremental_configs=[ConfigEntry(name, value or "", incremental_operation=op)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=timeout_s)


@dataclass
class Tally:
    """What happened to the requests of one run, compared per request_id."""

    sent: int
    answered: int
    lost: int
    duplicated: int  # requests with more than one answer
    extra_answers: int  # answers beyond the first, over all requests
    statuses: dict[str, int] = field(default_factory=dict)  # first answers by status/error code
    lost_ids: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"sent {self.sent}, answered {self.answered}, duplicated {self.duplicated} "
                f"(+{self.extra_answers} answers), lost {self.lost}; {dict(self.statuses)}")


def tally(client: RerankClient, ids: list[str]) -> Tally:
    snapshot = client.snapshot()
    answered = [i for i in ids if snapshot[i].answers]
    lost = [i for i in ids if not snapshot[i].answers]
    statuses: Counter[str] = Counter()
    for i in answered:
        response = snapshot[i].answers[0].response
        statuses[response["status"] if response.get("status") == "ok" else response["error"]["code"]] += 1
    return Tally(sent=len(ids), answered=len(answered), lost=len(lost),
                 duplicated=sum(1 for i in answered if len(snapshot[i].answers) > 1),
                 extra_answers=sum(len(snapshot[i].answers) - 1 for i in answered),
                 statuses=dict(statuses), lost_ids=lost[:20])


def short_requests(seed: int, docs: tuple[int, int] = (2, 6), chars: int = 160) -> Callable[[], dict]:
    """Small rerank requests (a few short real passages, whole rankings): the fault tests
    need many requests in flight, not heavy scoring, on a machine shared with others."""
    rng = random.Random(seed)
    passages = [p[:chars] for p in load_passages()]
    asked = queries(200, seed=seed)
    tag = uuid.uuid4().hex[:8]
    count = 0

    def make() -> dict:
        nonlocal count
        count += 1
        return {"request_id": f"f-{tag}-{count}", "query": rng.choice(asked),
                "documents": rng.sample(passages, rng.randint(*docs))}
    return make


class SteadyLoad:
    """Sends requests at a fixed rate from a thread until stopped (open loop: the rate does
    not drop while the service is down, which is the point)."""

    def __init__(self, client: RerankClient, make_request: Callable[[], dict], rate: float) -> None:
        self.client = client
        self.make_request = make_request
        self.rate = rate
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                due = started + len(self.ids) / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                    continue
                self.ids.append(self.client.send(self.make_request()))
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> "SteadyLoad":
        self._thread.start()
        return self

    def stop(self, flush_timeout_s: float = 120.0) -> list[str]:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error
        self.client.flush(flush_timeout_s)
        return list(self.ids)

    def wait_answers(self, count: int, timeout_s: float) -> bool:
        """Waits until at least `count` of the requests sent so far have an answer."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.client.answered() >= count:
                return True
            time.sleep(0.1)
        return False


@dataclass
class Failover:
    """How a fault showed at the client: the longest stretch without any answer, and latency
    (p50/p99, seconds) of the requests sent before the fault, during it, and after it ended."""

    longest_gap_s: float
    gap_began_s: float  # when that stretch began, from the fault (negative: before it)
    latency: dict[str, dict[str, float | int | None]]

    def line(self) -> str:
        def p99(phase: str) -> str:
            value = self.latency[phase]["p99"]
            return "-" if value is None else f"{value:.2f}"
        return (f"longest gap without answers {self.longest_gap_s:.1f} s (began {self.gap_began_s:+.1f} s from the "
                f"fault); p99 before/during/after {p99('before')}/{p99('during')}/{p99('after')} s")


def failover(client: RerankClient, ids: list[str], fault_at: float, recovered_at: float) -> Failover:
    """``fault_at`` and ``recovered_at`` are ``time.monotonic()`` readings: when the fault was
    injected, and when it was over (the node back, the replacement ready). A request belongs to
    the phase it was sent in; its latency is its first answer's."""
    snapshot = client.snapshot()
    received = sorted(a.received_at for i in ids for a in snapshot[i].answers)
    gap, began = 0.0, fault_at
    for earlier, later in zip(received, received[1:]):
        if later - earlier > gap:
            gap, began = later - earlier, earlier
    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for i in ids:
        request = snapshot[i]
        if not request.answers:
            continue
        phase = "before" if request.sent_at < fault_at else "during" if request.sent_at < recovered_at else "after"
        phases[phase].append(request.answers[0].latency_s)
    latency = {}
    for phase, values in phases.items():
        ordered = sorted(values)
        latency[phase] = {"n": len(ordered),
                          "p50": ordered[len(ordered) // 2] if ordered else None,
                          "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None}
    return Failover(longest_gap_s=gap, gap_began_s=began - fault_at, latency=latency)
