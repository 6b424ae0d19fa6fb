"""``python -m loadgen.bench.instrument``: does loadgen measure the service, or itself?

Starts a broker (``--bootstrap``, else ``KAFKA_BOOTSTRAP_SERVERS``, else the local Apache
Kafka) and one worker on the local test cross-encoder (``--model`` for another; any
``RERANK_*`` in the environment reaches the worker too), sends ``--rate`` requests/s of
``--docs`` documents for ``--seconds``, and reads every answer twice: with loadgen's
``RerankClient`` and with a plain per-message consumer in a process of its own
(:mod:`loadgen.plain_consumer`). Prints loadgen's result and latency breakdown, and both
p50/p99 side by side with the per-answer gap between the two arrival stamps; ``--json``
writes all of it, per answer included.

    python -m loadgen.bench.instrument --rate 4 --docs 10 --seconds 60 --json out/instrument.json
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console

from engines.testmodel import ensure_test_model
from loadgen.__main__ import print_check, print_result
from loadgen.bench.report import write_json
from loadgen.client import RerankClient
from loadgen.cluster.local_kafka import kafka_cluster
from loadgen.cluster.workers import WorkerProcess, worker_topics
from loadgen.plain_consumer import PlainConsumer
from loadgen.run import RequestFactory, compare_with_plain, parse_distribution, run_load


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rate", default=4.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Open loop: requests per second.")
@click.option("--docs", default="10", show_default=True, help="Documents per request (LO-HI, or a name).")
@click.option("--seconds", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--bootstrap", default=None, help="Use this cluster instead of starting one.")
@click.option("--engine", default=None, help="RERANK_ENGINE for the worker (default: the worker's own).")
@click.option("--precision", default=None, help="RERANK_PRECISION for the worker.")
@click.option("--model", default=None, help="RERANK_MODEL (default: the local test model, untrained head).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every figure here.")
def main(rate, docs, seconds, bootstrap, engine, precision, model, json_path) -> None:
    """Times the same answers with loadgen and with a plain per-message consumer."""
    console = Console()
    try:
        distribution = parse_distribution(docs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--docs") from None
    topics = worker_topics("ic")
    env = {**topics, "RERANK_MODEL": model or str(ensure_test_model())}
    env.update({k: v for k, v in (("RERANK_ENGINE", engine), ("RERANK_PRECISION", precision)) if v})
    log = Path(tempfile.mkdtemp(prefix="rerank-instrument-")) / "worker.log"
    with contextlib.ExitStack() as stack:
        if bootstrap is None:
            bootstrap, source = stack.enter_context(kafka_cluster())
            console.print(f"kafka: {bootstrap} ({source})")
        worker = WorkerProcess({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **env}, log, "instrument-worker").start()
        stack.callback(worker.stop)
        worker.wait_ready(600)
        console.print(f"worker: engine {worker.status()['engine']}, log {log}")
        with RerankClient(bootstrap, topics["RERANK_REQUEST_TOPIC"], [topics["RERANK_RESPONSE_TOPIC"]]) as client, \
                PlainConsumer(bootstrap, [topics["RERANK_RESPONSE_TOPIC"]]) as checker:
            result = run_load(client, RequestFactory(distribution, seed=0), rate=rate, duration_s=seconds,
                              timeout_s=60)
            arrivals = checker.collect([row["request_id"] for row in result.per_answer])
            check = compare_with_plain(result, client.snapshot(), arrivals)
    print_result(result, console, title=f"loadgen: {rate}/s of {docs} documents for {seconds:.0f} s")
    print_check(check, console)
    write_json(json_path, {**result.summary(), "docs": docs, "plain_consumer_check": check,
                           "per_answer": result.per_answer})
    sys.exit(1 if result.lost else 0)


if __name__ == "__main__":
    main()
