"""``python -m loadgen.bench.failover``: how long answers stop when a broker dies, and what
shortens it.

    python -m loadgen.bench.failover --json out/failover.json

For each configuration (``--configs``, default: Kafka's own broker settings, then a broker
session of 4 s), a fresh three-node cluster (``loadgen.cluster.multi_broker``) with those
settings, two workers (``--worker-session-s``) on topics at replication factor 3 and
min.insync.replicas 2, and a steady load of small requests (``--rate``); then the node leading
most request partitions is SIGKILLed, and restarted once answers flow again. Per configuration:
the longest stretch without any answer at the client, p99 of the requests sent before, during
and after the fault, duplicates and losses. Nothing is mocked: real brokers, real workers.

A broker that dies without a controlled shutdown leads its partitions until the controller
fences it (``broker.session.timeout.ms``, 9 s by default), so that bounds the gap; a lower
value shortens it at the risk of fencing a broker that is only slow (a long GC pause).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from engines.testmodel import ensure_test_model
from loadgen.bench.machine import machine, summary
from loadgen.bench.report import write_json
from loadgen.client import RerankClient
from loadgen.cluster.faults import SteadyLoad, failover, short_requests, tally
from loadgen.cluster.multi_broker import local_cluster
from loadgen.cluster.workers import WorkerProcess, wait_split, worker_topics

PARTITIONS = 4
#: name -> kafka.sh's failover variables for every node
CONFIGS = {
    "kafka-defaults": {},
    "broker-session-4s": {"KAFKA_BROKER_SESSION_TIMEOUT_MS": "4000", "KAFKA_BROKER_HEARTBEAT_INTERVAL_MS": "1000"},
}


def measure(name: str, broker_settings: dict[str, str], worker_env: dict[str, str], rate: float,
            logs: Path, console: Console) -> dict:
    """One configuration: a cluster of its own, two workers, a steady load, one leader SIGKILL."""
    env = {**worker_topics("fo"), "RERANK_REQUEST_PARTITIONS": str(PARTITIONS), "RERANK_RESPONSE_PARTITIONS": "2",
           **worker_env}
    with local_cluster(3, broker_settings=broker_settings) as cluster:
        env["KAFKA_BOOTSTRAP_SERVERS"] = cluster.bootstrap
        workers = [WorkerProcess(env, logs / f"{name}-{w}.log", f"failover-{w}").start() for w in "ab"]
        try:
            for worker in workers:
                worker.wait_ready()
            wait_split(workers, PARTITIONS)
            with RerankClient(cluster.bootstrap, env["RERANK_REQUEST_TOPIC"], [env["RERANK_RESPONSE_TOPIC"]]) as client:
                load = SteadyLoad(client, short_requests(41), rate).start()
                load.wait_answers(20, 90)
                victim = cluster.busiest_leader(env["RERANK_REQUEST_TOPIC"])
                console.print(f"failover, {name}: SIGKILL of node {victim}")
                fault_at = time.monotonic()
                cluster.kill(victim)
                load.wait_answers(client.answered() + 15, 120)
                cluster.restart(victim)
                cluster.wait_in_isr(env["RERANK_REQUEST_TOPIC"], victim)
                recovered_at = time.monotonic()
                load.wait_answers(client.answered() + 15, 120)
                ids = load.stop()
                client.wait(ids, 150)
                result, figures = tally(client, ids), failover(client, ids, fault_at, recovered_at)
        finally:
            alive = [w.proc.poll() is None for w in workers]
            for worker in workers:
                worker.stop()
    return {"config": name, "broker_settings": broker_settings, "killed_node": victim,
            "sent": result.sent, "answered": result.answered, "lost": result.lost, "duplicated": result.duplicated,
            "statuses": result.statuses, "longest_gap_s": figures.longest_gap_s, "latency_s": figures.latency,
            "workers_alive": alive}


def print_report(report: dict, console: Console) -> None:
    table = Table(title="a broker SIGKILLed under load: three nodes, two workers")
    for column in ("config", "longest gap s", "p99 before s", "p99 during s", "p99 after s", "sent", "dup", "lost"):
        table.add_column(column)
    for run in report["runs"]:
        p99 = {phase: run["latency_s"][phase]["p99"] for phase in ("before", "during", "after")}
        table.add_row(run["config"], f"{run['longest_gap_s']:.1f}",
                      *(f"{v:.2f}" if v is not None else "-" for v in p99.values()),
                      str(run["sent"]), str(run["duplicated"]), str(run["lost"]))
    console.print(table)


@click.command()
@click.option("--configs", default=",".join(CONFIGS), show_default=True,
              help=f"Comma-separated, of: {', '.join(CONFIGS)}.")
@click.option("--rate", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Requests per second (2-6 short documents each).")
@click.option("--worker-session-s", default=20.0, show_default=True,
              help="RERANK_SESSION_TIMEOUT_S of the workers.")
@click.option("--delivery", default="at_least_once", show_default=True,
              type=click.Choice(["at_least_once", "exactly_once"]))
@click.option("--model", default=None, help="RERANK_MODEL (default: the packaged test model, ONNX fp32).")
@click.option("--logs", default="out/failover-logs", show_default=True)
@click.option("--json", "json_path", default="out/failover.json", show_default=True)
def main(configs, rate, worker_session_s, delivery, model, logs, json_path) -> None:
    console = Console()
    names = [c.strip() for c in configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; known: {list(CONFIGS)}", param_hint="--configs")
    worker_env = {"RERANK_MODEL": model or str(ensure_test_model()), "RERANK_ENGINE": "onnx",
                  "RERANK_PRECISION": "fp32", "RERANK_SESSION_TIMEOUT_S": str(worker_session_s),
                  "RERANK_HEARTBEAT_INTERVAL_S": "1", "RERANK_DELIVERY": delivery}
    Path(logs).mkdir(parents=True, exist_ok=True)
    runs = [measure(name, CONFIGS[name], worker_env, rate, Path(logs), console) for name in names]
    report = {"machine": summary(machine()), "rate": rate, "worker_env": worker_env, "runs": runs,
              "command": " ".join(sys.argv)}
    print_report(report, console)
    write_json(json_path, report)
    if any(r["lost"] or not all(r["workers_alive"]) for r in runs):
        console.print("[red]failover: a request was lost or a worker died[/red]")
        sys.exit(1)


if __name__ == "__main__":
    main()
