"""``python -m loadgen``: drive a running rerank service through Kafka and measure it.

    python -m loadgen --bootstrap 127.0.0.1:9092 --rate 5 --docs 50-100 --duration 60 --json out/run.json
    python -m loadgen --concurrency 8 --docs mix --requests 500 --plot out/latency.png
    python -m loadgen --rate 4 --docs 10 --duration 30 --check-with-plain-consumer

Each answer is timed as it arrives, and its latency is split into parts (client → broker,
broker → worker, waiting for the engine, inference, building the answer, worker → client;
see loadgen.run.BREAKDOWN). ``--check-with-plain-consumer`` also reads the answers with a
plain per-message consumer in a process of its own and prints both latencies side by
side: the check that loadgen measures the service and not itself.
"""
from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from loadgen.client import ClientError, RerankClient
from loadgen.plain_consumer import PlainConsumer
from loadgen.run import (BREAKDOWN, DISTRIBUTIONS, LoadResult, RequestFactory, compare_with_plain, parse_distribution,
                         plot, run_load)


def print_result(result: LoadResult, console: Console, title: str = "loadgen") -> None:
    """One row per figure, so the table fits any terminal."""
    def ms(v):
        return "-" if v is None else f"{v * 1000:,.0f} ms"

    table = Table(title=title, show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("mode", result.mode),
        ("requests sent / answered", f"{result.sent} / {result.answered}"),
        ("lost (unanswered)", str(result.lost)),
        ("duplicate answers", str(result.duplicates)),
        ("errors", ", ".join(f"{k}: {v}" for k, v in result.errors.items()) or "none"),
        ("requests/s", f"{result.requests_per_s:,.2f}"),
        ("documents/s", f"{result.docs_per_s:,.1f}"),
        ("latency p50 / p90", f"{ms(result.p50)} / {ms(result.p90)}"),
        ("latency p99 / max", f"{ms(result.p99)} / {ms(result.max)}"),
    ]
    overhead = result.client_overhead
    if overhead:
        rows.append(("loadgen's own CPU", f"{overhead['process_cpu_share']:.0%} of a core (receiving thread "
                     f"{overhead['receive_thread_cpu_share']:.1%})"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    print_breakdown(result, console)


def print_breakdown(result: LoadResult, console: Console) -> None:
    """p50, p99 and mean of each part of the latency; means add up to end to end,
    percentiles do not."""
    if not result.breakdown:
        return
    table = Table(title=f"latency breakdown, {result.breakdown_answers} answers (means add up, percentiles do not)")
    for name, justify in (("part", "left"), ("p50", "right"), ("p99", "right"), ("mean", "right"),
                          ("clock", "left")):
        table.add_column(name, justify=justify, style="bold" if name == "part" else None)
    for part in BREAKDOWN:
        figures = result.breakdown.get(part.key)
        if figures:
            table.add_row(part.label, *(f"{figures[k]:,.1f} ms" for k in ("p50_ms", "p99_ms", "mean_ms")), part.clock,
                          end_section=part.key == "to_client_ms")
    console.print(table)


def print_check(check: dict, console: Console) -> None:
    """loadgen's latency beside the plain per-message consumer's, for the same answers."""
    def ms(v):
        return "-" if v is None else f"{v:,.1f} ms"

    table = Table(title=f"instrument check: loadgen vs a plain per-message consumer "
                        f"({check['answers_compared']} answers, {check['plain_missed']} missed by the plain one)")
    for name in ("", "p50", "p99"):
        table.add_column(name, justify="right" if name else "left")
    table.add_row("loadgen", ms(check["loadgen_p50_ms"]), ms(check["loadgen_p99_ms"]))
    table.add_row("plain consumer", ms(check["plain_p50_ms"]), ms(check["plain_p99_ms"]))
    table.add_row("difference", ms(check["p50_difference_ms"]), ms(check["p99_difference_ms"]))
    table.add_row("arrival gap per answer", ms(check["arrival_gap_p50_ms"]), ms(check["arrival_gap_p99_ms"]))
    console.print(table)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS", default="127.0.0.1:9092", show_default=True,
              help="Kafka bootstrap servers (or KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--request-topic", envvar="RERANK_REQUEST_TOPIC", default="rerank-requests", show_default=True)
@click.option("--response-topic", envvar="RERANK_RESPONSE_TOPIC", default="rerank-responses", show_default=True)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Open loop: requests per second.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Closed loop: requests in flight.")
@click.option("--docs", "docs", default="4-15", show_default=True,
              help=f"Documents per request: {', '.join(DISTRIBUTIONS)}, LO-HI, or LO-HI:W,LO-HI:W.")
@click.option("--document-words", type=click.IntRange(min=1),
              help="Each document this many words of passages run together (long pages); default one passage.")
@click.option("--max-chunks-per-doc", type=click.IntRange(min=1),
              help="Sent in every request: score long documents in up to this many chunks.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Seconds to send for.")
@click.option("--requests", "n_requests", type=click.IntRange(min=1), help="Requests to send.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the last answers; "
              "requests still unanswered then count as lost.")
@click.option("--top-n", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every figure here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a latency plot (PNG) here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--check-with-plain-consumer", "check", is_flag=True,
              help="Also read the answers with a plain per-message consumer in its own process and "
                   "print both latencies side by side (checks the instrument).")
def main(bootstrap, request_topic, response_topic, rate, concurrency, docs, document_words, max_chunks_per_doc,
         duration, n_requests, timeout, top_n, seed, json_path, plot_path, quiet, check) -> None:
    """Send rerank requests through Kafka and report throughput, latency, errors and losses."""
    console = Console(stderr=True)
    if (rate is None) == (concurrency is None):
        raise click.UsageError("give exactly one of --rate (open loop) or --concurrency (closed loop)")
    if duration is None and n_requests is None:
        raise click.UsageError("give --duration or --requests")
    try:
        distribution = parse_distribution(docs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--docs") from None
    try:
        client = RerankClient(bootstrap, request_topic, [response_topic])
    except ClientError as exc:
        console.print(f"[red]loadgen: {exc}[/red]")
        sys.exit(2)
    plain_check = None
    with client:
        # started (assigned at the topic's end) before the first request goes out
        checker = PlainConsumer(bootstrap, [response_topic]) if check else None
        try:
            extra = {"top_n": top_n} | ({"max_chunks_per_doc": max_chunks_per_doc} if max_chunks_per_doc else {})
            result = run_load(client, RequestFactory(distribution, seed, document_words), rate=rate,
                              concurrency=concurrency, requests=n_requests, duration_s=duration, timeout_s=timeout,
                              show_progress=not quiet, extra=extra)
            if checker is not None:
                arrivals = checker.collect([row["request_id"] for row in result.per_answer])
                plain_check = compare_with_plain(result, client.snapshot(), arrivals)
        finally:
            if checker is not None:
                checker.close()
    out = Console()
    print_result(result, out)
    if plain_check is not None:
        print_check(plain_check, out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({**result.summary(), "docs": docs, "bootstrap": bootstrap, "plain_consumer_check": plain_check,
                       "per_answer": result.per_answer}, f, indent=2)
    if plot_path:
        plot(result, plot_path)
    sys.exit(1 if result.lost else 0)


if __name__ == "__main__":
    main()
