"""``python -m loadgen.bench.delivery``: what exactly-once answers cost beside at-least-once.

    python -m loadgen.bench.delivery --json out/delivery.json

Starts a broker (``KAFKA_BOOTSTRAP_SERVERS``, else testcontainers or the local Apache Kafka)
unless ``--bootstrap`` names one. Then, ``--rounds`` times, for each ``RERANK_DELIVERY``
(at_least_once, then exactly_once, so that drift on a shared machine falls on both), one worker
on topics of its own, and two runs:

1. **saturated**: closed loop, ``--concurrency`` requests in flight for ``--saturate-s``:
   requests/s and documents/s. With too few in flight the run measures latency, not capacity
   (in-flight ÷ latency): at 8, exactly-once's +100 ms showed as 0.83x where 32 showed 0.93x;
2. **open loop**: ``--rate`` requests/s (Poisson, seeded: the same arrivals in every mode) for
   ``--duration`` s: p50/p99 of end-to-end latency at the client.

The client reads with ``isolation.level=read_committed`` (``loadgen.client``), as an
exactly-once client must. The summary gives exactly_once ÷ at_least_once for each figure,
from the best round of each (throughput) and the median of rounds (latency).
"""
from __future__ import annotations

import contextlib
import statistics
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from engines.testmodel import ensure_test_model
from loadgen.bench.latency import open_loop, warm_up
from loadgen.bench.machine import machine, summary
from loadgen.bench.report import write_json
from loadgen.client import RerankClient
from loadgen.cluster.local_kafka import kafka_cluster
from loadgen.cluster.workers import WorkerProcess, worker_topics
from loadgen.run import RequestFactory, parse_distribution, run_load

MODES = ("at_least_once", "exactly_once")


def measure_mode(bootstrap: str, mode: str, worker_env: dict[str, str], log_path: Path, *, docs: str,
                 concurrency: int, saturate_s: float, rate: float, duration_s: float, timeout_s: float) -> dict:
    """One worker with RERANK_DELIVERY=``mode``: its saturated throughput and open-loop latency."""
    topics = worker_topics("dlv")
    worker = WorkerProcess({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **topics, **worker_env, "RERANK_DELIVERY": mode},
                           log_path, f"delivery-{mode}").start()
    try:
        worker.wait_ready()
        with RerankClient(bootstrap, topics["RERANK_REQUEST_TOPIC"], [topics["RERANK_RESPONSE_TOPIC"]]) as client:
            warm_up(client, docs, 5, timeout_s)
            saturated = run_load(client, RequestFactory(parse_distribution(docs), seed=5), concurrency=concurrency,
                                 duration_s=saturate_s, timeout_s=timeout_s, show_progress=False)
            paced = open_loop(client, [("paced", RequestFactory(parse_distribution(docs), seed=7), rate)],
                              duration_s, "poisson", timeout_s, seed=7)["paced"]
    finally:
        code = worker.stop()
    return {"mode": mode, "requests_per_s": saturated.requests_per_s, "docs_per_s": saturated.docs_per_s,
            "saturated_lost": saturated.lost, "p50_ms": paced["end_to_end_ms"]["p50"],
            "p99_ms": paced["end_to_end_ms"]["p99"], "paced_sent": paced["sent"], "paced_lost": paced["lost"],
            "worker_exit": code}


def compare(runs: list[dict]) -> dict:
    """exactly_once ÷ at_least_once: best throughput of the rounds, median latency."""
    def of(mode: str) -> list[dict]:
        return [r for r in runs if r["mode"] == mode]

    best = {m: max(r["requests_per_s"] for r in of(m)) for m in MODES}
    p50 = {m: statistics.median(r["p50_ms"] for r in of(m)) for m in MODES}
    p99 = {m: statistics.median(r["p99_ms"] for r in of(m)) for m in MODES}
    return {"throughput_ratio": best["exactly_once"] / best["at_least_once"],
            "p50_ratio": p50["exactly_once"] / p50["at_least_once"],
            "p99_ratio": p99["exactly_once"] / p99["at_least_once"],
            "best_requests_per_s": best, "median_p50_ms": p50, "median_p99_ms": p99}


def print_report(report: dict, console: Console) -> None:
    table = Table(title=f"exactly-once beside at-least-once ({report['docs']} documents per request)")
    for column in ("round", "mode", "requests/s saturated", "docs/s", f"p50 ms at {report['rate']}/s", "p99 ms",
                   "lost"):
        table.add_column(column)
    for run in report["runs"]:
        table.add_row(str(run["round"]), run["mode"], f"{run['requests_per_s']:.1f}", f"{run['docs_per_s']:.0f}",
                      f"{run['p50_ms']:.0f}", f"{run['p99_ms']:.0f}", str(run["saturated_lost"] + run["paced_lost"]))
    console.print(table)
    c = report["comparison"]
    console.print(f"exactly_once ÷ at_least_once: throughput {c['throughput_ratio']:.2f}x (best of rounds), "
                  f"p50 {c['p50_ratio']:.2f}x, p99 {c['p99_ratio']:.2f}x (medians of rounds)")


@click.command()
@click.option("--bootstrap", default=None, help="Use this cluster instead of starting one.")
@click.option("--docs", default="4-15", show_default=True, help="Documents per request (LO-HI).")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(min=1),
              help="Requests in flight in the saturated run: enough that the worker, not latency, bounds it.")
@click.option("--saturate-s", default=30.0, show_default=True, type=click.FloatRange(min=1))
@click.option("--rate", default=4.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Open-loop requests per second for the latency run.")
@click.option("--duration", default=40.0, show_default=True, type=click.FloatRange(min=1))
@click.option("--timeout", default=120.0, show_default=True)
@click.option("--model", default=None, help="RERANK_MODEL (default: the packaged test model).")
@click.option("--worker-env", multiple=True, help="KEY=VALUE for the workers, repeatable.")
@click.option("--logs", default="out/delivery-logs", show_default=True)
@click.option("--json", "json_path", default="out/delivery.json", show_default=True)
def main(bootstrap, docs, rounds, concurrency, saturate_s, rate, duration, timeout, model, worker_env, logs,
         json_path) -> None:
    console = Console()
    env = {"RERANK_MODEL": model or str(ensure_test_model()), **dict(kv.split("=", 1) for kv in worker_env)}
    Path(logs).mkdir(parents=True, exist_ok=True)
    with kafka_cluster() if bootstrap is None else contextlib.nullcontext((bootstrap, "--bootstrap")) as (servers, source):
        console.print(f"delivery: Kafka {servers} ({source})")
        runs = []
        for round_ in range(1, rounds + 1):
            for mode in MODES:
                console.print(f"delivery: round {round_}, {mode}")
                run = measure_mode(servers, mode, env, Path(logs) / f"{mode}-{round_}.log", docs=docs,
                                   concurrency=concurrency, saturate_s=saturate_s, rate=rate, duration_s=duration,
                                   timeout_s=timeout)
                runs.append({"round": round_, **run})
    report = {"machine": summary(machine()), "docs": docs, "rate": rate, "concurrency": concurrency,
              "worker_env": env, "runs": runs, "comparison": compare(runs), "command": " ".join(sys.argv)}
    print_report(report, console)
    write_json(json_path, report)
    if any(r["saturated_lost"] or r["paced_lost"] or r["worker_exit"] for r in runs):
        console.print("[red]delivery: a request was lost or a worker did not stop cleanly[/red]")
        sys.exit(1)


if __name__ == "__main__":
    main()
