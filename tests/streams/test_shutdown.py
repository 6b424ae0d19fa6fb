"""Stopping in bounded time: the repeat limiter and the watchdog on their own, then a real
worker SIGTERMed mid-request while its broker goes away (it must be gone within the grace
period, and once a broker and a worker are back, every request must be answered)."""
from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from engines.testmodel import ensure_test_model
from loadgen.client import RerankClient
from loadgen.cluster.faults import RestartableBroker, short_requests, tally
from loadgen.cluster.local_kafka import REPO
from loadgen.cluster.workers import WorkerProcess
from streams.lifecycle import Watchdog
from streams.logs import RepeatLimiter, broker_named


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limited_logger(limiter: RepeatLimiter, name: str = "aiokafka.conn") -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(limiter)
    logger = logging.getLogger(f"{name}.{uuid.uuid4().hex[:6]}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_a_repeated_connection_error_is_logged_once_per_interval_with_a_count():
    clock = FakeClock()
    limiter = RepeatLimiter(10.0, clock=clock)
    logger, out = limited_logger(limiter)
    for i in range(500):  # ~50 a second for 10 s, as aiokafka does with the broker away
        logger.error("Unable connect to node with id %s: %s", 1, f"[Errno 111] attempt {i}")
        clock.now += 0.02
    clock.now = 1010.5  # past the 10 s interval
    logger.error("Unable connect to node with id %s: %s", 1, "[Errno 111] again")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == "ERROR Unable connect to node with id 1: [Errno 111] attempt 0"
    assert lines[1].startswith("ERROR Unable connect to node with id 1: [Errno 111] again [499 more like this")
    assert limiter.held_back == 499


def test_the_limiter_keeps_other_messages_levels_and_loggers():
    clock = FakeClock()
    limiter = RepeatLimiter(10.0, clock=clock)
    logger, out = limited_logger(limiter)
    ours, ours_out = limited_logger(limiter, "rerank.api")
    for _ in range(3):
        logger.error("Unable to update metadata from %s", [1])
        logger.warning("Got error produce response: %s", "NodeNotReadyError")
        logger.info("a routine line")
        logger.critical("something that must always show")
        ours.error("not a limited logger")
    lines = out.getvalue().splitlines()
    assert lines.count("ERROR Unable to update metadata from [1]") == 1
    assert lines.count("WARNING Got error produce response: NodeNotReadyError") == 1
    assert lines.count("INFO a routine line") == 3
    assert lines.count("CRITICAL something that must always show") == 3
    assert ours_out.getvalue().count("not a limited logger") == 3


def test_messages_about_different_brokers_are_limited_each_on_its_own():
    clock = FakeClock()
    limiter = RepeatLimiter(10.0, clock=clock)
    logger, out = limited_logger(limiter, "aiokafka.client")
    for _ in range(3):  # two nodes of a cluster away at once: each is named, once
        for node in (1, 2):
            logger.error("Unable connect to node with id %s: %s", node, "[Errno 111] refused")
            logger.error("Failed fetch messages from %s: %s", node, "NodeNotReadyError")
            logger.warning("Cannot send %r to %s: %r", "ProduceRequest", node, "timeout")
        for port in (19512, 19513):
            logger.error('Unable connect to "%s:%s": %s', "127.0.0.1", port, "[Errno 111] refused")
    lines = out.getvalue().splitlines()
    assert len(lines) == 8, lines
    assert [line for line in lines if "node with id" in line] == [
        "ERROR Unable connect to node with id 1: [Errno 111] refused",
        "ERROR Unable connect to node with id 2: [Errno 111] refused"]
    assert sum("127.0.0.1:19512" in line for line in lines) == sum("127.0.0.1:19513" in line for line in lines) == 1
    assert limiter.held_back == 16
    clock.now += 11
    logger.error("Unable connect to node with id %s: %s", 2, "[Errno 111] refused")
    assert out.getvalue().splitlines()[-1].endswith("[2 more like this in the last 11 s not logged]")


def test_the_broker_a_message_names():
    assert broker_named("Unable connect to node with id 3: [Errno 111]") == "3"
    assert broker_named("Marking the coordinator dead (node 2)for group g.") == "2"
    assert broker_named("Failed fetch offsets from 1: KafkaConnectionError") == "1"
    assert broker_named('Unable to request metadata from "127.0.0.1:9093": refused') == "127.0.0.1:9093"
    assert broker_named("Heartbeat failed for group g: generation id is not current.") is None


def test_a_record_seen_by_two_handlers_is_judged_once():
    clock = FakeClock()
    limiter = RepeatLimiter(10.0, clock=clock)
    logger, first = limited_logger(limiter)
    second = io.StringIO()
    other = logging.StreamHandler(second)
    other.addFilter(limiter)
    logger.addHandler(other)
    for _ in range(3):
        logger.error("Heartbeat failed")
    assert first.getvalue().count("Heartbeat failed") == 1
    assert second.getvalue().count("Heartbeat failed") == 1
    assert limiter.held_back == 2


def test_a_zero_interval_lets_everything_through():
    limiter = RepeatLimiter(0.0)
    logger, out = limited_logger(limiter)
    for _ in range(5):
        logger.error("Unable to update metadata from %s", [1])
    assert len(out.getvalue().splitlines()) == 5


def test_the_watchdog_exits_at_the_earliest_deadline_it_was_given():
    exited: list[int] = []
    done = threading.Event()

    def fake_exit(code: int) -> None:
        exited.append(code)
        done.set()

    dog = Watchdog(exit=fake_exit)
    started = time.monotonic()
    dog.arm(60, "a late deadline")
    dog.arm(0.2, "an earlier one")
    dog.arm(30, "a later one, ignored")
    assert done.wait(10), "the watchdog did not fire"
    assert exited == [1]
    assert 0.15 <= time.monotonic() - started < 10


def test_the_watchdog_ends_a_process_whose_exit_is_blocked():
    """What it is for: the interpreter's exit waits for a busy thread (here a pool thread
    sleeping 60 s, as the engine thread does mid-step); the watchdog ends it anyway."""
    script = textwrap.dedent("""
        import time
        from concurrent.futures import ThreadPoolExecutor
        from streams.lifecycle import Watchdog
        ThreadPoolExecutor(1).submit(time.sleep, 60)
        Watchdog().arm(0.5, "test")
        raise SystemExit(0)
    """)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 30
    assert "exiting now" in proc.stderr


GRACE_S = 10.0
MARGIN_S = 10.0  # the OS tearing the process down, and a machine shared with other jobs


def group_alive(worker: WorkerProcess, pgid: int) -> bool:
    """True while any process of the worker's process group is left."""
    worker.proc.poll()  # reaps the worker itself: a zombie still counts as a group member
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def pairs_per_second(client: RerankClient, ids: list[str]) -> float:
    """The worker's own scoring speed, from its answers' meta."""
    pairs = seconds = 0.0
    for request_id in ids:
        meta = client.answers(request_id)[0].response["meta"]
        pairs += meta["scored_by_cross_encoder"]
        seconds += meta["inference_ms"] / 1000
    return pairs / max(seconds, 1e-3)


@pytest.mark.kafka
@pytest.mark.faults
@pytest.mark.timeout(600)
def test_sigterm_mid_request_then_the_broker_goes_away_the_worker_exits_in_time_and_loses_nothing(tmp_path):
    tag = uuid.uuid4().hex[:8]
    env = {"RERANK_MODEL": str(ensure_test_model()), "RERANK_ENGINE": "onnx", "RERANK_PRECISION": "fp32",
           "RERANK_REQUEST_TOPIC": f"req-{tag}", "RERANK_RESPONSE_TOPIC": f"resp-{tag}",
           "RERANK_DEAD_LETTER_TOPIC": f"dlq-{tag}", "RERANK_GROUP_ID": f"workers-{tag}",
           "RERANK_REPLY_TO_PREFIX": f"replies-{tag}.", "RERANK_REQUEST_PARTITIONS": "2",
           "RERANK_RESPONSE_PARTITIONS": "2",
           "RERANK_SESSION_TIMEOUT_S": "6", "RERANK_HEARTBEAT_INTERVAL_S": "1", "RERANK_SUMMARY_EVERY_S": "2",
           "RERANK_SHUTDOWN_GRACE_S": str(GRACE_S)}
    make = short_requests(31, docs=(12, 24), chars=300)
    workers: list[WorkerProcess] = []
    with RestartableBroker(state_dir=tmp_path / "kafka") as broker:
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        try:
            first = WorkerProcess(env, tmp_path / "w1.log", "worker-1").start()
            workers.append(first)
            first.wait_ready()
            with RerankClient(broker.bootstrap, f"req-{tag}", [f"resp-{tag}"]) as client:
                probe = [client.send(make()) for _ in range(3)]
                client.flush()
                assert client.wait(probe, 240), "no answer before the test proper:\n" + first.tail()
                # About 8 s of scoring for this worker on this machine: the broker goes away
                # 3 s after SIGTERM, while the worker is still answering.
                speed = pairs_per_second(client, probe)
                ids = [client.send(make()) for _ in range(max(6, min(200, int(8 * speed / 18))))]
                client.flush()
                deadline = time.monotonic() + 120
                while not client.answered() > len(probe) and time.monotonic() < deadline:
                    time.sleep(0.05)  # the first of them are answered: the rest are being scored
                state = first.status("/healthz") or {}
                assert state.get("inflight_pairs", 0) > 0, f"nothing in flight at SIGTERM: {state}"

                lines_before = len(first.log_path.read_text().splitlines())
                pgid = os.getpgid(first.proc.pid)
                sigterm_at = time.monotonic()
                first.proc.send_signal(signal.SIGTERM)
                time.sleep(3)
                broker_alive_then = first.proc.poll() is None
                broker.stop()
                while group_alive(first, pgid) and time.monotonic() - sigterm_at < GRACE_S + MARGIN_S + 30:
                    time.sleep(0.1)
                took = time.monotonic() - sigterm_at
                log_text = first.log_path.read_text()
                outage_lines = len(log_text.splitlines()) - lines_before
                print(f"\nSIGTERM with {state.get('inflight_pairs')} pairs in flight "
                      f"({len(ids)} requests sent at ~{speed:.0f} pairs/s); worker still running when the "
                      f"broker stopped: {broker_alive_then}; exit {first.proc.poll()} after {took:.1f} s; "
                      f"{outage_lines} log lines meanwhile")
                print("\n".join(line for line in log_text.splitlines() if "stopping" in line or "exiting" in line))
                assert not group_alive(first, pgid), f"worker processes left {took:.0f} s after SIGTERM:\n{first.tail()}"
                assert took <= GRACE_S + MARGIN_S, f"the worker took {took:.1f} s to exit:\n{first.tail()}"
                assert outage_lines < 200, f"{outage_lines} log lines in {took:.0f} s: not rate-limited"

                broker.start()
                second = WorkerProcess(env, tmp_path / "w2.log", "worker-2").start()
                workers.append(second)
                second.wait_ready()
                all_ids = [*probe, *ids]
                client.wait(all_ids, 300)
                result = tally(client, all_ids)
                print(f"after a new broker start and worker: {result.line()}")
                assert result.lost == 0, f"lost: {result.lost_ids}\n{second.tail()}"
                assert set(result.statuses) == {"ok"}, result.statuses
            code = second.stop()
            assert code == 0, f"worker-2 exit status {code} on SIGTERM with the broker up:\n{second.tail()}"
        finally:
            for worker in workers:
                worker.kill()
