"""``python -m loadgen.bench.scheduler_replay``: #22's mixed arrivals through the scheduler, in virtual time.

The latency bench (``loadgen.bench.latency``) measures the service, but on a 2-vCPU machine shared
by the broker, the worker and the client, its p99 ratios move by half their size between runs of
one worker, so it cannot tell two orders apart in an hour. This replays its workload in one
process, with nothing else moving: open-loop Poisson arrivals of requests of 4-15 documents at 2/s
and of 50-100 documents at 1.25/s (the latency bench's requests, from ``loadgen.run.RequestFactory``),
through the real :class:`engines.scheduler.Scheduler` (the real tokenizer, the real choice of every
micro-batch), each alone and both together. Only the cross-encoder's run is replaced, by a cost
model that advances a virtual clock: a micro-batch of ``size`` pairs at ``width`` tokens takes
``CALL_S + size x width x token_s``, and ``token_s`` is set so that the large requests alone keep the
engine busy ``--load`` of the time (half, as in #22). The same seeds give the same figures on any
machine.

What it leaves out: Kafka, the worker's own work, the machine's noise and the small batches'
extra cost per pair. Compare orders and batching with it; measure the service with the latency bench.

    python -m loadgen.bench.scheduler_replay --seeds 4 --duration 1200 --json out/scheduler_replay.json
"""
from __future__ import annotations

import os
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from engines import EngineConfig, RerankJob, build_reranker
from engines.config import SCHEDULER_POLICIES
from engines.reranker import Reranker
from engines.scheduler import Scheduler
from engines.testmodel import ensure_test_model
from loadgen.bench.machine import machine
from loadgen.bench.report import command, write_json
from loadgen.run import RequestFactory

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: The fixed cost of one micro-batch (seconds): the call, building its arrays.
CALL_S = 0.002
#: The two request streams, as the latency bench sends them: (name, documents, requests/s).
SMALL, LARGE = ("small", (4, 15), 2.0), ("large", (50, 100), 1.25)


@dataclass
class Arrival:
    at: float
    stream: str
    job: RerankJob


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def arrivals(streams, duration_s: float, seed: int) -> list[Arrival]:
    """Each stream's Poisson arrivals over ``duration_s``, from its own generators (seeded by
    ``seed`` and its name): a stream arrives the same way alone and beside another."""
    out = []
    for name, (lo, hi), rate in streams:
        timing = random.Random(f"{seed}-{name}")
        factory = RequestFactory([(1.0, lo, hi)], seed=random.Random(f"{seed}-{name}-documents").randrange(2**31))
        at = timing.expovariate(rate)
        while at < duration_s:
            request = factory()
            out.append(Arrival(at, name, RerankJob(request["query"], request["documents"])))
            at += timing.expovariate(rate)
    return sorted(out, key=lambda a: a.at)


class Replay:
    """Runs arrivals through a :class:`Scheduler` of ``reranker`` in virtual time."""

    def __init__(self, reranker: Reranker, policy: str, token_s: float) -> None:
        self.reranker = reranker
        self.policy = policy
        self.token_s = token_s
        self.clock = VirtualClock()
        self.busy_s = 0.0
        # the one replaced part: the cross-encoder's run advances the clock instead of computing
        reranker.cross_encoder.run_micro_batch = self._run_micro_batch

    def _run_micro_batch(self, parts, width: int, size: int | None = None) -> np.ndarray:
        count = sum(len(rows) for _, rows in parts)
        seconds = CALL_S + (size or count) * width * self.token_s
        self.clock.now += seconds
        self.busy_s += seconds
        return np.zeros(count, dtype=np.float32)

    def run(self, timeline: list[Arrival]) -> dict:
        """Every arrival's latency (its answer's time less its arrival), per stream, and the
        share of the time the engine ran."""
        clock = self.clock
        clock.now, self.busy_s = 0.0, 0.0
        scheduler = Scheduler(self.reranker, policy=self.policy, clock=clock, wall_clock=clock)
        latencies: dict[str, list[float]] = {}
        waiting: dict[int, Arrival] = {}
        real = padded = 0
        next_up = 0
        while next_up < len(timeline) or scheduler.busy:
            if not scheduler.busy:
                clock.now = max(clock.now, timeline[next_up].at)
            now = clock.now
            while next_up < len(timeline) and timeline[next_up].at <= now:
                arrival = timeline[next_up]
                clock.now = arrival.at  # its arrival time, for the fair order
                scheduler.submit(next_up, arrival.job, self.reranker.plan(arrival.job))
                clock.now = now
                waiting[next_up] = arrival
                next_up += 1
            step = scheduler.step()
            assert not step.failed and not step.expired, (step.failed, step.expired)
            real, padded = real + step.real_tokens, padded + step.padded_tokens
            for finished in step.finished:
                arrival = waiting.pop(finished.key)
                latencies.setdefault(arrival.stream, []).append(clock.now - arrival.at)
        return {"latencies": latencies, "busy": self.busy_s / max(clock.now, 1e-9),
                "padding": padded / real - 1 if real else 0.0}


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def calibrate(replay: Replay, load: float, seed: int, duration_s: float = 300.0) -> None:
    """Sets ``replay``'s seconds per padded token to where the large requests alone keep the engine
    busy ``load`` of the time (busy time is proportional to it, but for the fixed cost per call)."""
    timeline = arrivals([LARGE], duration_s, seed)
    for _ in range(2):  # the second pass corrects for the fixed cost per call
        replay.token_s *= load / replay.run(timeline)["busy"]


def measure(reranker: Reranker, policy: str, seeds: int, duration_s: float, load: float) -> dict:
    """Per seed: each stream's p99 alone and together, their ratios; and their means over seeds."""
    replay = Replay(reranker, policy, token_s=80e-6)
    calibrate(replay, load, seed=10_000)
    rows = []
    for seed in range(seeds):
        small_alone = replay.run(arrivals([SMALL], duration_s, seed))
        large_alone = replay.run(arrivals([LARGE], duration_s, seed))
        together = replay.run(arrivals([SMALL, LARGE], duration_s, seed))
        row = {"seed": seed,
               "small_p99_alone_s": p99(small_alone["latencies"]["small"]),
               "small_p99_together_s": p99(together["latencies"]["small"]),
               "large_p99_alone_s": p99(large_alone["latencies"]["large"]),
               "large_p99_together_s": p99(together["latencies"]["large"]),
               "requests": {"small": len(together["latencies"]["small"]), "large": len(together["latencies"]["large"])},
               "busy_together": together["busy"], "padding_together": together["padding"]}
        row["small_ratio"] = row["small_p99_together_s"] / row["small_p99_alone_s"]
        row["large_ratio"] = row["large_p99_together_s"] / row["large_p99_alone_s"]
        rows.append(row)
    mean = {key: statistics.mean(row[key] for row in rows)
            for key in ("small_p99_alone_s", "small_p99_together_s", "large_p99_alone_s", "large_p99_together_s",
                        "small_ratio", "large_ratio", "busy_together", "padding_together")}
    return {"policy": policy, "token_s": replay.token_s, "load": load, "seeds": rows, "mean": mean}


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__.split("\n\n")[0])
@click.option("--policy", type=click.Choice(SCHEDULER_POLICIES), default="aged", show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=4, show_default=True, help="arrival timelines replayed")
@click.option("--duration", "duration_s", type=click.FloatRange(min=1), default=1200.0, show_default=True,
              help="virtual seconds of arrivals per timeline")
@click.option("--load", type=click.FloatRange(0.05, 0.95), default=0.5, show_default=True,
              help="share of the engine's time the large requests alone take")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the results here")
def main(policy: str, seeds: int, duration_s: float, load: float, json_path: Path | None) -> None:
    # OpenVINO for its shape buckets, which the scheduler's batches follow; nothing is inferred
    reranker = build_reranker(EngineConfig(engine="openvino", precision="fp32", model=str(ensure_test_model()),
                                           device="cpu"))
    result = measure(reranker, policy, seeds, duration_s, load)
    report = {"command": command("loadgen.bench.scheduler_replay"), "machine": machine(),
              "duration_s": duration_s, **result}
    table = Table("seed", "small p99 alone → together", "×", "large p99 alone → together", "×", "busy", "padding",
                  title=f"{policy}, {result['token_s'] * 1e6:.1f} µs a padded token, large alone {load:.0%} busy, "
                        f"{duration_s:.0f} virtual s a timeline")
    for row in [*result["seeds"], {"seed": "mean", **result["mean"]}]:
        table.add_row(str(row["seed"]), f"{row['small_p99_alone_s'] * 1e3:.0f} → {row['small_p99_together_s'] * 1e3:.0f} ms",
                      f"{row['small_ratio']:.2f}x",
                      f"{row['large_p99_alone_s'] * 1e3:.0f} → {row['large_p99_together_s'] * 1e3:.0f} ms",
                      f"{row['large_ratio']:.2f}x", f"{row['busy_together']:.0%}", f"{row['padding_together']:.1%}")
    Console(width=150).print(table)
    write_json(json_path, report)


if __name__ == "__main__":
    main()
