"""``python -m loadgen.bench.scheduler_speed``: the engine alone, windows against the scheduler.

The same requests as ``make bench`` (rounds of 80 requests of 4-15 documents), through one engine
in one process, four ways, interleaved ``--reps`` times so that a slow spell of a shared machine
falls on all of them:

* windows of up to 512 pairs through ``Reranker.rerank`` at 2048 tokens a micro-batch (the worker
  before the scheduler) and at 1024;
* the scheduler as the worker runs it, saturated (``engine_speed.run_saturated``), with its backlog
  budget (``max_backlog_batch_tokens``) as configured, and with it set to the ordinary budget.

Reported per contender: pairs/s best and median over all rounds, each ÷ windows at 2048 tokens,
and the padding.

    python -m loadgen.bench.scheduler_speed --reps 5 --json out/scheduler_speed.json
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from engines import EngineConfig, build_reranker
from engines.corpus import load_passages
from engines.testmodel import ensure_test_model
from loadgen.bench.engine_speed import SchedulerContender, make_rounds, measure_windows
from loadgen.bench.machine import machine
from loadgen.bench.report import command, write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BEFORE = "windows, 2048 tokens"


def contenders(reranker) -> dict:
    """Name -> a function of one round's requests giving its figures (``engine_speed``'s), each
    run at its own micro-batch budgets, which are put back after it."""
    runner = reranker.cross_encoder
    budget, backlog = runner.max_batch_tokens, runner.max_backlog_batch_tokens
    scheduler = SchedulerContender(reranker)

    def at(tokens: int, backlog_tokens: int, measure):
        def run(requests) -> dict:
            runner.max_batch_tokens, runner.max_backlog_batch_tokens = tokens, backlog_tokens
            try:
                return measure(requests)
            finally:
                runner.max_batch_tokens, runner.max_backlog_batch_tokens = budget, backlog
        return run

    def windowed(requests) -> dict:
        return measure_windows(reranker, requests)

    return {BEFORE: at(2048, backlog, windowed), f"windows, {budget} tokens": at(budget, backlog, windowed),
            f"scheduler, {budget} + backlog {backlog} tokens": at(budget, backlog, scheduler.measure),
            f"scheduler, {budget} tokens, no backlog budget": at(budget, budget, scheduler.measure)}


def measure(reranker, rounds: list, warm: list, reps: int) -> dict:
    """Every contender on every round, ``reps`` times over, interleaved; figures per contender."""
    runs = contenders(reranker)
    for run in runs.values():
        run(warm)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    padding: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for requests in rounds:
            for name, run in runs.items():
                figures = run(requests)
                rates[name].append(figures["pairs_per_s"])
                padding[name].append(figures["padding_overhead"])
    best_before, median_before = max(rates[BEFORE]), statistics.median(rates[BEFORE])
    return {name: {"best": max(values), "median": statistics.median(values),
                   "best_vs_before": max(values) / best_before,
                   "median_vs_before": statistics.median(values) / median_before,
                   "padding": statistics.mean(padding[name]), "pairs_per_s": values}
            for name, values in rates.items()}


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__.split("\n\n")[0])
@click.option("--reps", type=click.IntRange(min=1), default=5, show_default=True,
              help="times every contender runs every round")
@click.option("--engine", default="openvino", show_default=True)
@click.option("--precision", default="auto", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the results here")
def main(reps: int, engine: str, precision: str, json_path: Path | None) -> None:
    reranker = build_reranker(EngineConfig(engine=engine, precision=precision, model=str(ensure_test_model()),
                                           device="cpu"))
    reranker.warmup()
    rounds, warm = make_rounds(False, load_passages())
    report = {"command": command("loadgen.bench.scheduler_speed"), "machine": machine(),
              "engine": reranker.engine_name, "reps": reps, "contenders": measure(reranker, rounds, warm, reps)}
    table = Table("contender", "pairs/s best", "median", "best ÷ before", "median ÷ before", "padding",
                  title=f"{reranker.engine_name}, {len(rounds)} rounds x {reps}; before = {BEFORE}")
    for name, row in report["contenders"].items():
        table.add_row(name, f"{row['best']:.1f}", f"{row['median']:.1f}", f"{row['best_vs_before']:.3f}",
                      f"{row['median_vs_before']:.3f}", f"{100 * row['padding']:.1f}%")
    Console(width=150).print(table)
    write_json(json_path, report)


if __name__ == "__main__":
    main()
