"""``make demo``: the whole service on this machine, end to end, in one command.

Brings up Kafka (KAFKA_BOOTSTRAP_SERVERS if set, else the local Apache Kafka), starts
one worker, sends a short load of rerank requests through Kafka, prints what came back,
and cleans up. With no model hub reachable it ranks with the local test cross-encoder
(``engines.testmodel``), whose head is untrained: the pipeline is real, the scores are
not relevance. Set RERANK_MODEL to a real cross-encoder folder or hub id to change that.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engines.testmodel import ensure_test_model
from loadgen.__main__ import print_result
from loadgen.client import RerankClient
from loadgen.cluster.local_kafka import kafka_cluster
from loadgen.cluster.workers import WorkerProcess
from loadgen.run import RequestFactory, parse_distribution, run_load


def main() -> int:
    console = Console()
    console.rule("[bold]kafka-rerank demo")
    model = os.environ.get("RERANK_MODEL")
    if model is None:
        with console.status("building the local test cross-encoder (first run only)"):
            model = str(ensure_test_model())
        console.print(f"model: [bold]{model}[/bold]\n  MiniLM-L6 cross-encoder with an [yellow]untrained head[/yellow]: "
                      "real compute, scores are not relevance (set RERANK_MODEL for a trained one)")
    else:
        console.print(f"model: [bold]{model}[/bold] (RERANK_MODEL)")
    with kafka_cluster() as (bootstrap, source):
        console.print(f"kafka: {bootstrap} ({source})")
        log = Path(tempfile.mkdtemp(prefix="rerank-demo-")) / "worker.log"
        worker = WorkerProcess({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "RERANK_MODEL": model}, log, "demo-worker")
        with console.status("starting a worker (loads and, the first time, exports the model)"):
            worker.start()
            try:
                worker.wait_ready(timeout_s=600)
            except RuntimeError as exc:
                console.print(f"[red]{exc}[/red]")
                worker.stop()
                return 1
        health = worker.status("/ready")
        console.print(f"worker: engine [bold]{health['engine']}[/bold], {health['partitions']} partitions, "
                      f"log {log}")
        try:
            with RerankClient(bootstrap) as client:
                factory = RequestFactory(parse_distribution("4-15:3,50-100:1"), seed=int(time.time()))
                result = run_load(client, factory, concurrency=8, requests=120, timeout_s=60)
                print_result(result, console, title="demo: 120 requests, 4-15 and 50-100 documents, 8 in flight")
                sample = next(iter(client.snapshot().values())).answers
                if sample:
                    show_sample(console, sample[0].response, factory)
        finally:
            code = worker.stop()
            console.print(f"worker stopped (exit {code}); {'stopping Kafka' if source.startswith('local') else ''}")
    return 0 if result.lost == 0 else 1


def show_sample(console: Console, response: dict, factory: RequestFactory) -> None:
    if response.get("status") != "ok":
        console.print(f"sample answer: {response}")
        return
    table = Table(title=f"one answer: {response['request_id']} (top 3 of {response['meta']['documents']}; "
                        "untrained-head scores)" if "test-cross-encoder" in response["model"] else
                        f"one answer: {response['request_id']}")
    table.add_column("rank", justify="right")
    table.add_column("index", justify="right")
    table.add_column("relevance_score", justify="right")
    for rank, r in enumerate(response["results"][:3], 1):
        table.add_row(str(rank), str(r["index"]), f"{r['relevance_score']:.4f}")
    console.print(table)
    meta = response["meta"]
    console.print(f"meta: queue {meta['queue_ms']:.0f} ms, inference {meta['inference_ms']:.0f} ms, "
                  f"total {meta['total_ms']:.0f} ms, engine {response['engine']}, worker {meta['worker']}")


if __name__ == "__main__":
    sys.exit(main())
