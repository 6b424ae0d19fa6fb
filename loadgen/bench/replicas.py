"""Do replicas on one host add up? One engine process against N at once, per engine.

    python -m loadgen.bench.replicas --json out/replicas.json [--quick] [--require 1.6]

For each engine (default: OpenVINO at precision ``auto``, ONNX Runtime int8, PyTorch fp32) N
processes (default 2) each build the engine with ``--threads`` inference threads (default 1), the
way N worker replicas of a host do, on the untrained-head MiniLM-L6 test cross-encoder
(:mod:`engines.testmodel`) and the engine benchmark's requests (standard-library passages, 4-15
documents each, in windows of up to 512 pairs: :mod:`loadgen.bench.engine_speed`). Each round:

1. **one**: process 0 alone scores the round's requests, window after window, for ``--seconds``;
2. **together**: all N score the same requests at once, from one start instant.

A process counts the pairs of the windows it finished before the deadline, over the time up to
the end of its last counted window. Every process keeps scoring until it passes the deadline, so
each counted window ran while all the others were still running; the window that crosses the
deadline is not counted. A configuration's figure is its best round (other load on the machine can
only slow a round down). The report gives pairs/s of one process, each process's and their sum
together, and the scaling ``sum / one``: N on an N-core machine is perfect, 1.0 is no gain (what
OpenVINO's CPU pinning gave: every process pinned to the same cores). ``cpu_utilisation`` is a
process's CPU seconds per second over the counted time: a pinned process that shares a core shows
about 0.5.

``--pinning both`` adds each engine with ``cpu_pinning=True`` (RERANK_CPU_PINNING=true) as a
contrast. Run it on a quiet machine: figures taken while other work shares the cores say little.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from engines import RerankJob
from engines.config import cpu_budget
from engines.corpus import load_passages
from engines.testmodel import ensure_test_model
from loadgen.bench.engine_speed import WINDOW_MAX_PAIRS, EngineContender, make_requests, windows
from loadgen.bench.machine import machine
from loadgen.bench.report import command, table, write_json

DEFAULT_ENGINES = [("openvino", "auto"), ("onnx", "int8"), ("torch", "fp32")]
QUICK_ENGINES = [("openvino", "auto")]
TARGET_SCALING = 1.6  # issue 18: two 1-thread processes on a 2-core machine
START_DELAY_S = 1.0  # commands reach every process before the common start instant
READY_TIMEOUT_S = 900.0  # a first build exports and quantizes the model


log = logging.getLogger("loadgen.bench.replicas")


def round_seed(round_index: int) -> int:
    return 7 + round_index  # the engine benchmark's round seeds


@dataclass
class Plan:
    engines: list[tuple[str, str]]
    processes: int = 2
    threads: int = 1
    seconds: float = 30.0
    rounds: int = 3
    requests_per_round: int = 200
    window_pairs: int = WINDOW_MAX_PAIRS
    pinning: tuple[bool, ...] = (False,)


# -- one process ----------------------------------------------------------------------------------
def window_jobs(requests, window_pairs: int) -> list[list[RerankJob]]:
    return [[RerankJob(q, docs, prefilter=False) for q, docs in window] for window in windows(requests, window_pairs)]


def timed_run(reranker, jobs: list[list[RerankJob]], start_at: float, seconds: float) -> dict:
    """Score the windows ``jobs`` one after another (cycling) from ``start_at`` (``time.monotonic``,
    one clock for every process of the host) until a window ends past ``start_at + seconds``."""
    deadline = start_at + seconds
    late = time.monotonic() - start_at  # > 0: the command came after the start instant
    time.sleep(max(0.0, -late))
    cpu_start = cpu_last = time.process_time()
    last, pairs, counted = start_at, 0, 0
    for window in itertools.cycle(jobs):
        reranker.rerank(window)
        now = time.monotonic()
        if now > deadline:
            break
        last, cpu_last = now, time.process_time()
        pairs += sum(len(job.documents) for job in window)
        counted += 1
    elapsed = last - start_at
    return {
        "pairs": pairs,
        "windows": counted,
        "elapsed_s": elapsed,
        "late_s": max(0.0, late),
        "pairs_per_s": pairs / elapsed if elapsed > 0 else 0.0,
        "cpu_utilisation": (cpu_last - cpu_start) / elapsed if elapsed > 0 else 0.0,
    }


def _replica(index: int, engine: str, precision: str, model_path: str, options: dict, rounds: list[tuple[int, int]],
             window_pairs: int, commands, results) -> None:
    """A child process: build the engine and every round's windows, say so, then run each
    ``(start_at, seconds, round)`` it is sent."""
    logging.basicConfig(level=logging.WARNING)
    try:
        passages = load_passages()
        contender = EngineContender(engine, precision, model_path, make_requests(10, seed=100, passages=passages), **options)
        jobs = [window_jobs(make_requests(n, seed=seed, passages=passages), window_pairs) for seed, n in rounds]
        results.put(("ready", index, {"engine": contender.name, "build_s": contender.build_s, "pid": os.getpid()}))
        for start_at, seconds, round_index in iter(commands.get, None):
            results.put(("done", index, timed_run(contender.reranker, jobs[round_index], start_at, seconds)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
        results.put(("failed", index, f"{exc.__class__.__name__}: {exc}"))


# -- N processes ----------------------------------------------------------------------------------
class Replicas:
    """N spawned processes with one engine each, told when to start and for how long."""

    def __init__(self, plan: Plan, engine: str, precision: str, model_path: str, cpu_pinning: bool):
        context = multiprocessing.get_context("spawn")  # no fork of a process holding runtimes
        self.results = context.Queue()
        self.commands = [context.Queue() for _ in range(plan.processes)]
        options = {"threads": plan.threads, "cpu_pinning": cpu_pinning}
        rounds = [(round_seed(r), plan.requests_per_round) for r in range(plan.rounds)]
        self.processes = [
            context.Process(target=_replica, args=(i, engine, precision, model_path, options, rounds, plan.window_pairs,
                                                   self.commands[i], self.results), daemon=True)
            for i in range(plan.processes)
        ]
        for process in self.processes:
            process.start()
        self.ready = [self._answer("ready", READY_TIMEOUT_S) for _ in self.processes]

    def _answer(self, kind: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            try:
                got, index, payload = self.results.get(timeout=5)
            except queue.Empty:  # see whether a process died without a word
                dead = [p.exitcode for p in self.processes if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"replica processes stopped or hung (exit codes {dead})") from None
                continue
            if got == "failed":
                raise RuntimeError(f"replica {index}: {payload}")
            if got == kind:
                return index, payload

    def run(self, how_many: int, seconds: float, round_index: int) -> list[dict]:
        """Processes ``0..how_many-1`` score the round's requests from one common start instant."""
        start_at = time.monotonic() + START_DELAY_S
        for commands in self.commands[:how_many]:
            commands.put((start_at, seconds, round_index))
        answers = dict(self._answer("done", seconds + 600) for _ in range(how_many))
        late = max(answer["late_s"] for answer in answers.values())
        if late > 0.05 * seconds:
            log.warning("a process started %.2f s late (machine busy?): its run overlapped the others less", late)
        return [answers[i] for i in range(how_many)]

    def close(self) -> None:
        for commands in self.commands:
            commands.put(None)
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()


def summarise(one_rounds: list[dict], together_rounds: list[list[dict]]) -> dict:
    """Best round of one process and best round of N together (by their sum), and the scaling."""
    if any(run["windows"] == 0 for run in [*one_rounds, *itertools.chain(*together_rounds)]):
        raise RuntimeError("a process finished no window within --seconds: give it more seconds or smaller windows")
    one = max(one_rounds, key=lambda r: r["pairs_per_s"])
    sums = [sum(r["pairs_per_s"] for r in runs) for runs in together_rounds]
    best = max(range(len(sums)), key=sums.__getitem__)
    together = together_rounds[best]
    return {
        "one": {
            "pairs_per_s": one["pairs_per_s"],
            "cpu_utilisation": one["cpu_utilisation"],
            "windows": one["windows"],
            "rounds_pairs_per_s": [round(r["pairs_per_s"], 1) for r in one_rounds],
        },
        "together": {
            "pairs_per_s_sum": sums[best],
            "per_process_pairs_per_s": [r["pairs_per_s"] for r in together],
            "cpu_utilisation": [r["cpu_utilisation"] for r in together],
            "windows": [r["windows"] for r in together],
            "rounds_pairs_per_s_sum": [round(s, 1) for s in sums],
        },
        "scaling": sums[best] / one["pairs_per_s"],
    }


def measure_engine(plan: Plan, engine: str, precision: str, model_path: str, cpu_pinning: bool) -> dict:
    replicas = Replicas(plan, engine, precision, model_path, cpu_pinning)
    try:
        one_rounds, together_rounds = [], []
        for r in range(plan.rounds):
            one_rounds.append(replicas.run(1, plan.seconds, r)[0])
            together_rounds.append(replicas.run(plan.processes, plan.seconds, r))
    finally:
        replicas.close()
    names = {payload["engine"] for _, payload in replicas.ready}
    return {
        "engine": names.pop() if len(names) == 1 else sorted(names),
        "requested": f"{engine}:{precision}",
        "cpu_pinning": cpu_pinning,
        "threads_per_process": plan.threads,
        "processes": plan.processes,
        "build_s": [round(payload["build_s"], 1) for _, payload in replicas.ready],
        **summarise(one_rounds, together_rounds),
    }


def run(plan: Plan, quick: bool = False) -> dict:
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    model_path = str(ensure_test_model())
    budget = cpu_budget()
    report: dict = {
        "command": command("loadgen.bench.replicas"),
        "quick": quick,
        "machine": {**machine(), "cpu_budget": budget.describe()},
        "model": {"path": model_path, "label": "test-cross-encoder-minilm-l6 (untrained head; same cost as ms-marco-MiniLM-L-6-v2)"},
        "workload": {
            "processes": plan.processes,
            "threads_per_process": plan.threads,
            "seconds_per_run": plan.seconds,
            "rounds": plan.rounds,
            "requests_per_round": plan.requests_per_round,
            "documents_per_request": "4-15",
            "window_max_pairs": plan.window_pairs,
            "method": "each round: process 0 alone, then all together from one start instant, same requests; "
            "pairs of windows finished before the deadline; best round",
        },
        "target_scaling": TARGET_SCALING if plan.processes == 2 else None,
        "results": [],
    }
    if plan.processes * plan.threads > budget.affinity:
        report["warning"] = f"{plan.processes} x {plan.threads} threads on {budget.affinity} CPUs: the machine is oversubscribed"
    for engine, precision in plan.engines:
        for pinning in plan.pinning:
            report["results"].append(measure_engine(plan, engine, precision, model_path, pinning))
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["elapsed_s"] = time.perf_counter() - started
    return report


# -- output ---------------------------------------------------------------------------------------
def _rows(report: dict):
    n = report["workload"]["processes"]
    for row in report["results"]:
        together = row["together"]
        yield (
            str(row["engine"]),
            "on" if row["cpu_pinning"] else "off",
            f"{row['one']['pairs_per_s']:.1f}",
            " + ".join(f"{x:.1f}" for x in together["per_process_pairs_per_s"]),
            f"{together['pairs_per_s_sum']:.1f}",
            f"{row['scaling']:.2f}x (of {n})",
            f"{row['one']['cpu_utilisation']:.2f} / " + " ".join(f"{x:.2f}" for x in together["cpu_utilisation"]),
        )


HEADERS = ("engine", "pinning", "one process, pairs/s", "together, each", "together, sum", "scaling", "CPU s/s one / each")


def print_report(report: dict) -> None:
    console = Console(width=150)
    m, w = report["machine"], report["workload"]
    console.print(
        f"[bold]Replicas on one host[/] on {m['cpu_model']} (a process may use {m['cpu_budget']}; load at start "
        f"{m['load_average_at_start'][0]:.2f}): {w['processes']} processes x {w['threads_per_process']} thread(s), "
        f"best of {w['rounds']} rounds of {w['seconds_per_run']:g} s"
    )
    results = Table(*HEADERS)
    for row in _rows(report):
        results.add_row(*row)
    console.print(results)
    if report.get("warning"):
        console.print(f"[yellow]{report['warning']}[/]")


def markdown(report: dict) -> str:
    return "\n".join(table(HEADERS, _rows(report), align="llrrrrr"))


def shortfalls(report: dict, required: float) -> list[str]:
    """Unpinned engines whose scaling is below ``required``."""
    return [
        f"{row['engine']}: {row['scaling']:.2f}x < {required:g}x"
        for row in report["results"]
        if not row["cpu_pinning"] and row["scaling"] < required
    ]


def _engine_list(text: str) -> list[tuple[str, str]]:
    pairs = [tuple(item.strip().split(":", 1)) for item in text.split(",") if item.strip()]
    return [(p[0], p[1] if len(p) == 2 else "auto") for p in pairs]


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__.split("\n\n")[0])
@click.option("--engines", "engines_text", help="engine:precision list (default openvino:auto,onnx:int8,torch:fp32)")
@click.option("--processes", type=click.IntRange(min=1), default=2, help="processes run together (default 2)")
@click.option("--threads", type=click.IntRange(min=1), default=1, help="inference threads per process (default 1)")
@click.option("--seconds", type=float, help="length of each run (default 30; torch fp32 at 1 thread takes ~10 s a window)")
@click.option("--rounds", type=int, help="rounds (default 3); each figure is the best round")
@click.option("--window-pairs", type=int, help=f"pairs per window (default {WINDOW_MAX_PAIRS}, the worker's)")
@click.option("--pinning", type=click.Choice(["off", "on", "both"]), default="off",
              help="cpu_pinning of the engines (default off)")
@click.option("--quick", is_flag=True, help="smoke run: the default engine, 1 round of 8 s, 32-pair windows")
@click.option("--require", type=float, help="exit 1 when an unpinned engine scales below this (e.g. 1.6)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the results here")
@click.option("--markdown", "show_markdown", is_flag=True, help="also print the table as Markdown")
def main(engines_text: str | None, processes: int, threads: int, seconds: float | None, rounds: int | None,
         window_pairs: int | None, pinning: str, quick: bool, require: float | None, json_path: Path | None,
         show_markdown: bool) -> None:
    plan = Plan(
        engines=_engine_list(engines_text) if engines_text else (QUICK_ENGINES if quick else DEFAULT_ENGINES),
        processes=processes,
        threads=threads,
        seconds=seconds or (8.0 if quick else 30.0),
        rounds=rounds or (1 if quick else 3),
        requests_per_round=40 if quick else 200,
        window_pairs=window_pairs or (32 if quick else WINDOW_MAX_PAIRS),
        pinning={"off": (False,), "on": (True,), "both": (False, True)}[pinning],
    )
    report = run(plan, quick=quick)
    print_report(report)
    if show_markdown:
        print(markdown(report))
    if write_json(json_path, report):
        print(f"wrote {json_path}")
    if require is not None:
        missed = shortfalls(report, require)
        if missed:
            print("below the required scaling: " + "; ".join(missed))
            sys.exit(1)


if __name__ == "__main__":
    main()
