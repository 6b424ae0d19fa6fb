"""``make loadtest``: the planning table, measured on this machine through Kafka.

For each strategy (a worker configuration) and each document-count bucket it finds the
highest open-loop request rate whose p99 latency stays under ``--p99-bound`` and reports
the documents/s and p99 sustained there. It also measures the streaming overhead: the
documents/s a saturated worker delivers through Kafka divided by what the same engine,
through the same scheduler kept as busy, does offline in one process.

    python -m loadgen.bench.loadtest --json out/loadtest.json --markdown out/loadtest.md

The model is the local test cross-encoder (MiniLM-L6, untrained head) unless RERANK_MODEL
names another: speed is the same as ms-marco-MiniLM-L-6-v2, the scores mean nothing.
"""
from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console

from engines import RerankJob, build_reranker
from engines.testmodel import ensure_test_model
from loadgen.bench.engine_speed import run_saturated
from loadgen.bench.machine import machine, summary
from loadgen.bench.report import command, table, write_json, write_text
from loadgen.client import RerankClient
from loadgen.cluster.local_kafka import kafka_cluster
from loadgen.cluster.workers import WorkerProcess, worker_topics
from loadgen.run import RequestFactory, parse_distribution, run_load
from streams.settings import WorkerSettings


@dataclass(frozen=True)
class Strategy:
    name: str
    env: dict[str, str]


STRATEGIES = [
    Strategy("torch cross-encoder (fp32)", {"RERANK_ENGINE": "torch", "RERANK_PRECISION": "fp32",
                                            "RERANK_PREFILTER_THRESHOLD": "100000"}),
    Strategy("ONNX int8", {"RERANK_ENGINE": "onnx", "RERANK_PRECISION": "int8",
                           "RERANK_PREFILTER_THRESHOLD": "100000"}),
    Strategy("ONNX int8 + prefilter", {"RERANK_ENGINE": "onnx", "RERANK_PRECISION": "int8",
                                       "RERANK_PREFILTER_THRESHOLD": "100", "RERANK_PREFILTER_KEEP": "100"}),
    Strategy("OpenVINO int8 + prefilter", {"RERANK_ENGINE": "openvino", "RERANK_PRECISION": "int8",
                                           "RERANK_PREFILTER_THRESHOLD": "100", "RERANK_PREFILTER_KEEP": "100"}),
]
BUCKETS = ["4-15", "50-100", "100-200", "300-1000"]
#: The streaming overhead is this strategy's saturated rate through Kafka over the same offline.
OVERHEAD_STRATEGY, OVERHEAD_BUCKET = "ONNX int8", "50-100"


def measure_bucket(client: RerankClient, bucket: str, bound_s: float, run_s: float, console: Console) -> dict:
    """Saturate (closed loop) to find capacity, then step the open-loop rate down until p99 fits."""
    factory = RequestFactory(parse_distribution(bucket), seed=7)
    saturated = run_load(client, factory, concurrency=4, duration_s=run_s, timeout_s=max(60.0, 4 * bound_s),
                         show_progress=False)
    capacity = saturated.requests_per_s
    tried = []
    best = None
    rate = 0.8 * capacity
    for _ in range(3):
        if rate <= 0:
            break
        result = run_load(client, factory, rate=rate, duration_s=run_s, timeout_s=max(60.0, 4 * bound_s),
                          show_progress=False)
        tried.append({"rate": rate, "p99": result.p99, "docs_per_s": result.docs_per_s, "lost": result.lost})
        console.print(f"    open loop {rate:.2f} req/s: p99 {result.p99 or 0:.2f} s, "
                      f"{result.docs_per_s:.0f} docs/s, lost {result.lost}")
        if result.p99 is not None and result.p99 <= bound_s and result.lost == 0:
            best = result
            break
        rate *= 0.6
    return {
        "bucket": bucket,
        "saturated_docs_per_s": saturated.docs_per_s,
        "saturated_p99": saturated.p99,
        "sustained_rate": best and float(tried[-1]["rate"]),
        "sustained_docs_per_s": best and best.docs_per_s,
        "sustained_p99": best and best.p99,
        # where the latency went (loadgen.run.BREAKDOWN), at the sustained rate and saturated
        "sustained_breakdown": best and best.breakdown,
        "saturated_breakdown": saturated.breakdown,
        "lost": saturated.lost + sum(t["lost"] for t in tried),
        "tried": tried,
    }


def offline_docs_per_s(env: dict[str, str], model: str, bucket: str, seconds: float) -> float:
    """The same engine and windows in this process, without Kafka: the streaming ceiling."""
    settings = WorkerSettings(model=model, engine=env["RERANK_ENGINE"], precision=env["RERANK_PRECISION"],
                              prefilter_threshold=int(env["RERANK_PREFILTER_THRESHOLD"]),
                              prefilter_keep=int(env.get("RERANK_PREFILTER_KEEP", "100")))
    reranker = build_reranker(settings.engine_config)
    reranker.warmup()
    factory = RequestFactory(parse_distribution(bucket), seed=7)
    jobs = (RerankJob(req["query"], req["documents"]) for req in iter(factory, None))
    started = time.monotonic()
    docs, _ = run_saturated(reranker, jobs, seconds=seconds)  # the worker's scheduler, saturated
    return docs / (time.monotonic() - started)


def markdown(report: dict) -> str:
    rows = [(row["bucket"], row["strategy"],
             f"{row['sustained_docs_per_s']:.0f}" if row["sustained_docs_per_s"] else "not within bound",
             f"{row['sustained_p99']:.2f}" if row["sustained_p99"] else "-",
             f"{row['sustained_rate']:.2f}" if row["sustained_rate"] else "-",
             f"{row['saturated_docs_per_s']:.0f}", row["lost"]) for row in report["rows"]]
    o = report["streaming_overhead"]
    overhead = (f"Streaming overhead ({o['strategy']}, {o['bucket']} documents): through Kafka "
                f"{o['kafka_docs_per_s']:.0f} docs/s ÷ offline {o['offline_docs_per_s']:.0f} docs/s = "
                f"**{o['ratio']:.2f}** (target ≥ 0.9).") if o else \
        f"Streaming overhead: not measured (it is measured on {OVERHEAD_STRATEGY}, {OVERHEAD_BUCKET} documents)."
    lines = [f"Machine: {report['machine']}. Model: {report['model_note']}. p99 bound: {report['p99_bound_s']} s. "
             f"Command: `{report['command']}`.", "",
             *table(["documents/request", "strategy", "sustained docs/s (p99 ≤ bound)", "p99 there (s)", "req/s there",
                     "saturated docs/s", "lost"], rows),
             "", overhead]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--json", "json_path", default="out/loadtest.json", show_default=True)
@click.option("--markdown", "md_path", default="out/loadtest.md", show_default=True)
@click.option("--p99-bound", default=5.0, show_default=True, help="Seconds: the latency a sustained rate must keep.")
@click.option("--run-seconds", default=10.0, show_default=True, help="Length of each measured run.")
@click.option("--strategies", default="all", help="Comma-separated strategy names (substring match) or 'all'.")
@click.option("--buckets", default=",".join(BUCKETS), show_default=True)
def main(json_path, md_path, p99_bound, run_seconds, strategies, buckets) -> None:
    console = Console()
    model = os.environ.get("RERANK_MODEL") or str(ensure_test_model())
    model_note = model if os.environ.get("RERANK_MODEL") else \
        "local MiniLM-L6 test cross-encoder (untrained head: same cost as ms-marco-MiniLM-L-6-v2, scores meaningless)"
    chosen = [s for s in STRATEGIES if strategies == "all" or any(k.strip().lower() in s.name.lower()
                                                                   for k in strategies.split(","))]
    report = {"machine": summary(machine()), "model": model, "model_note": model_note, "p99_bound_s": p99_bound,
              "command": command("loadgen.bench.loadtest"), "rows": []}
    started = time.monotonic()
    logs = Path(tempfile.mkdtemp(prefix="rerank-loadtest-"))
    with kafka_cluster() as (bootstrap, source):
        console.print(f"kafka: {bootstrap} ({source}); machine: {report['machine']}")
        overhead = None
        for strategy in chosen:
            tag = uuid.uuid4().hex[:8]
            topics = worker_topics("lt", tag)
            env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "RERANK_MODEL": model, **topics, **strategy.env}
            worker = WorkerProcess(env, logs / f"{tag}.log", f"loadtest-{tag}").start()
            try:
                worker.wait_ready(600)
                console.rule(f"{strategy.name} ({worker.status()['engine']})")
                with RerankClient(bootstrap, topics["RERANK_REQUEST_TOPIC"], [topics["RERANK_RESPONSE_TOPIC"]]) as client:
                    for bucket in buckets.split(","):
                        console.print(f"  {bucket} documents")
                        row = measure_bucket(client, bucket, p99_bound, run_seconds, console)
                        row["strategy"] = strategy.name
                        report["rows"].append(row)
                        if overhead is None and strategy.name == OVERHEAD_STRATEGY and bucket == OVERHEAD_BUCKET:
                            overhead = {"strategy": strategy.name, "bucket": bucket,
                                        "kafka_docs_per_s": row["saturated_docs_per_s"]}
            finally:
                worker.stop()
            if overhead is not None and "offline_docs_per_s" not in overhead:
                overhead["offline_docs_per_s"] = offline_docs_per_s(strategy.env, model, OVERHEAD_BUCKET, run_seconds)
                overhead["ratio"] = overhead["kafka_docs_per_s"] / overhead["offline_docs_per_s"]
                console.print(f"streaming overhead: {overhead['ratio']:.2f}")
    report["streaming_overhead"] = overhead  # None when its strategy was not run
    report["wall_s"] = time.monotonic() - started
    write_json(json_path, report)
    write_text(md_path, markdown(report))
    console.print(markdown(report))
    console.print(f"wrote {json_path} and {md_path} in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
