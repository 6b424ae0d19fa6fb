"""``python -m loadgen.bench.latency``: what a request's latency is made of, alone and under load.

    python -m loadgen.bench.latency --json out/latency.json

Starts a broker (``KAFKA_BOOTSTRAP_SERVERS``, else testcontainers or the local Apache Kafka)
unless ``--bootstrap`` names one, starts one worker, and measures three things:

1. **lone**: ``--lone`` requests of exactly 10 documents, one at a time with the worker
   otherwise idle: end-to-end latency at the client against the worker's own inference
   time (the answers' ``meta``: ``queue_ms``, ``inference_ms``, ``total_ms``). The ratio
   of the two p50s is what an idle worker adds (the window, Kafka, the client).
2. **capacity**: the worker saturated (closed loop, ``--capacity-concurrency`` in flight) with
   background-sized requests (``--background-docs``, 50-100): requests/s it sustains.
3. **mixed sizes**, each run ``--duration`` s: small requests (``--small-docs``) at
   ``--small-rate`` per second alone; the background requests alone at ``--background-share``
   (0.5) of that capacity, or at ``--background-rate`` requests/s (then 2. is skipped: runs that
   compare two workers should load both alike); then both together. ``--cycles N`` takes these
   three runs in turn N times, with new requests each cycle, and pools each run's latencies over
   the cycles. Per run the p50/p99 of each size and the background's throughput; the summary
   gives small p99 together ÷ alone and large p99 together ÷ alone (the worker's scheduler
   should keep them near 1), pooled and per cycle.

Arrivals are open loop (``--arrivals poisson``, seeded, or ``fixed`` intervals). Latency is
what ``loadgen.client.RerankClient`` stamps per answer (its receipt time minus its send time).
The worker gets the packaged test model unless ``--model`` names another, and every RERANK_*
variable of this shell (plus ``--worker-env KEY=VALUE``).
"""
from __future__ import annotations

import contextlib
import random
import sys
import time
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from engines.testmodel import ensure_test_model
from loadgen.bench.machine import machine, summary
from loadgen.bench.report import write_json
from loadgen.client import RerankClient
from loadgen.cluster.local_kafka import kafka_cluster
from loadgen.cluster.workers import WorkerProcess, worker_topics
from loadgen.run import DISTRIBUTIONS, RequestFactory, parse_distribution, run_load

LONE_DOCUMENTS = 10


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    arr = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "max": float(arr.max()), "n": int(arr.size)}


def breakdown(client: RerankClient, ids: list[str]) -> dict:
    """Latency figures (ms) of the first answer of each request: end to end at the client,
    the worker's queue/inference/total from meta, and what lies outside the worker (Kafka
    both ways and the client: end to end minus the worker's total)."""
    snapshot = client.snapshot()
    e2e, queue, inference, total, outside = [], [], [], [], []
    errors = 0
    for request_id in ids:
        answers = snapshot[request_id].answers
        if not answers:
            continue
        answer = answers[0]
        if answer.response.get("status") != "ok":
            errors += 1
            continue
        meta = answer.response["meta"]
        e2e.append(answer.latency_s * 1000)
        queue.append(meta["queue_ms"])
        inference.append(meta["inference_ms"])
        total.append(meta["total_ms"])
        outside.append(answer.latency_s * 1000 - meta["total_ms"])
    answered = sum(1 for i in ids if snapshot[i].answers)
    documents = sum(snapshot[i].documents for i in ids if snapshot[i].answers)
    return {"sent": len(ids), "answered": answered, "lost": len(ids) - answered, "errors": errors,
            "documents": documents,
            "end_to_end_ms": percentiles(e2e), "queue_ms": percentiles(queue),
            "inference_ms": percentiles(inference), "worker_total_ms": percentiles(total),
            "outside_worker_ms": percentiles(outside)}


def lone_requests(client: RerankClient, count: int, pause_s: float, timeout_s: float) -> dict:
    """One 10-document request at a time, each sent once the previous one is answered and
    the worker has been idle for `pause_s`."""
    factory = RequestFactory([(1.0, LONE_DOCUMENTS, LONE_DOCUMENTS)], seed=3)
    ids = []
    for _ in range(count):
        request_id = client.send(factory())
        client.flush()
        ids.append(request_id)
        if not client.wait([request_id], timeout_s):
            break
        time.sleep(pause_s)
    result = breakdown(client, ids)
    e2e, inference = result["end_to_end_ms"]["p50"], result["inference_ms"]["p50"]
    result["end_to_end_over_inference_p50"] = e2e / inference if e2e and inference else None
    return result


def warm_up(client: RerankClient, docs: str, count: int, timeout_s: float) -> None:
    """``count`` requests of ``docs`` documents through the worker, answered before anything is timed."""
    factory = RequestFactory(parse_distribution(docs), seed=1)
    request_ids = [client.send(factory()) for _ in range(count)]
    client.flush()
    client.wait(request_ids, timeout_s)


def send_open_loop(client: RerankClient, streams: list[tuple[str, RequestFactory, float]], duration_s: float,
                   arrivals: str, timeout_s: float, seed: int = 0) -> dict[str, list[str]]:
    """Sends every stream (name, factory, requests/s) at once, open loop, for `duration_s`,
    waits up to `timeout_s` for the last answers, and returns each stream's request ids. Each
    stream draws its arrivals from its own generator (seeded by ``seed`` and its name), so a
    stream sent alone and beside another arrives the same way in both runs."""
    rngs = {name: random.Random(f"{seed}-{name}") for name, _, _ in streams}

    def gap(name: str, rate: float) -> float:
        return rngs[name].expovariate(rate) if arrivals == "poisson" else 1.0 / rate

    started = time.monotonic()
    due = {name: started for name, _, _ in streams}  # every stream sends at least one request
    ids: dict[str, list[str]] = {name: [] for name, _, _ in streams}
    end = started + duration_s
    while True:
        name, when = min(due.items(), key=lambda kv: kv[1])
        if when >= end:
            break
        delay = when - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        _, factory, rate = next(s for s in streams if s[0] == name)
        ids[name].append(client.send(factory()))
        due[name] = when + gap(name, rate)
    client.flush()
    client.wait([i for stream in ids.values() for i in stream], timeout_s)
    return ids


def open_loop(client: RerankClient, streams: list[tuple[str, RequestFactory, float]], duration_s: float,
              arrivals: str, timeout_s: float, seed: int = 0) -> dict[str, dict]:
    """:func:`send_open_loop`, then each stream's breakdown."""
    ids = send_open_loop(client, streams, duration_s, arrivals, timeout_s, seed)
    return {name: {**breakdown(client, ids[name]), "rate_per_s": rate} for name, _, rate in streams}


def throughput(result: dict, duration_s: float) -> dict:
    """Answers and documents per second of a run's stream over its sending time."""
    return {"answered_per_s": result["answered"] / duration_s, "docs_per_s": result["documents"] / duration_s}


def ratios(report: dict) -> dict:
    """p99 together ÷ p99 alone, for the small requests and for the background."""
    def ratio(together: str, alone: str) -> float | None:
        a, b = report[together]["end_to_end_ms"]["p99"], report[alone]["end_to_end_ms"]["p99"]
        return a / b if a and b else None
    return {"small_p99_together_over_alone": ratio("small_with_background", "small_alone"),
            "background_p99_together_over_alone": ratio("background", "background_alone")}


#: The runs of 3., pooled over the cycles: small alone, background alone, then the two together
#: (the small requests' breakdown, then the background's).
MIXED_PHASES = ("small_alone", "background_alone", "small_with_background", "background")


def mixed_sizes(client: RerankClient, small_docs: str, small_rate: float, background_docs: str,
                background_rate: float, cycles: int, duration_s: float, arrivals: str, timeout_s: float,
                console: Console, share: str) -> list[dict[str, list[str]]]:
    """Small requests alone, the background alone, then both together, ``cycles`` times over.

    Within a cycle the three runs draw the same requests and arrivals for a stream, so alone
    and together differ only by what shares the worker; each cycle draws new ones. Taking the
    three runs in turn, several times, spreads over all three whatever slows the machine for a
    few minutes (one 2-vCPU machine moved by 30% between runs), where one long run of each
    would put it in one. Returns, per cycle, its request ids per phase (:data:`MIXED_PHASES`)."""
    out = []
    for cycle in range(cycles):
        seed = 11 + 100 * cycle  # cycle 0 draws what a single run always drew

        def small() -> RequestFactory:
            return RequestFactory(parse_distribution(small_docs), seed=seed)

        def background() -> RequestFactory:
            return RequestFactory(parse_distribution(background_docs), seed=seed + 2)

        label = f"cycle {cycle + 1}/{cycles}: " if cycles > 1 else ""
        console.print(f"latency: {label}small requests ({small_docs}) alone at {small_rate}/s for {duration_s:.0f} s")
        small_alone = send_open_loop(client, [("small", small(), small_rate)], duration_s, arrivals, timeout_s,
                                     seed=seed)["small"]
        console.print(f"latency: {label}background requests ({background_docs}) alone at {background_rate:.2f}/s "
                      f"({share})")
        background_alone = send_open_loop(client, [("background", background(), background_rate)], duration_s,
                                          arrivals, timeout_s, seed=seed)["background"]
        console.print(f"latency: {label}small requests with the background, {duration_s:.0f} s")
        together = send_open_loop(client, [("small", small(), small_rate), ("background", background(), background_rate)],
                                  duration_s, arrivals, timeout_s, seed=seed)
        out.append({"small_alone": small_alone, "background_alone": background_alone,
                    "small_with_background": together["small"], "background": together["background"]})
    return out


def measure(bootstrap: str, worker_env: dict[str, str], log_path: Path, *, lone: int, lone_pause_s: float,
            small_docs: str, small_rate: float, background_docs: str, background_share: float,
            capacity_s: float, capacity_concurrency: int, duration_s: float, arrivals: str, timeout_s: float,
            console: Console, background_rate: float | None = None, cycles: int = 1) -> dict:
    """The runs of the module's docstring. The background goes at ``background_share`` of the
    capacity measured first, or at ``background_rate`` requests/s when given (no capacity run):
    the capacity measured in 30 s moved by up to 30% between runs on a 2-vCPU machine, and with
    it the background's load, so runs that compare two workers give both the same rate."""
    topics = worker_topics("lat")
    worker = WorkerProcess({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **topics, **worker_env}, log_path,
                           "latency-worker").start()
    report: dict = {"machine": summary(machine()), "worker_env": worker_env, "arrivals": arrivals}
    try:
        console.print(f"latency: starting a worker on {bootstrap} (log {log_path})")
        worker.wait_ready()
        with RerankClient(bootstrap, topics["RERANK_REQUEST_TOPIC"], [topics["RERANK_RESPONSE_TOPIC"]]) as client:
            warm_up(client, background_docs, 3, timeout_s)

            console.print(f"latency: {lone} lone requests of {LONE_DOCUMENTS} documents")
            report["lone"] = lone_requests(client, lone, lone_pause_s, timeout_s)

            if background_rate is None:
                console.print(f"latency: capacity with {background_docs} documents "
                              f"({capacity_concurrency} in flight, {capacity_s:.0f} s)")
                saturated = run_load(client, RequestFactory(parse_distribution(background_docs), seed=5),
                                     concurrency=capacity_concurrency, duration_s=capacity_s, timeout_s=timeout_s,
                                     show_progress=False)
                report["capacity"] = {"docs": background_docs, "requests_per_s": saturated.requests_per_s,
                                      "docs_per_s": saturated.docs_per_s, "lost": saturated.lost}
                background_rate = background_share * saturated.requests_per_s
            else:
                background_share = None

            share = "a given rate" if background_share is None else f"{background_share:.0%} of capacity"
            report["background_rate"] = background_rate
            ids = mixed_sizes(client, small_docs, small_rate, background_docs, background_rate, cycles,
                              duration_s, arrivals, timeout_s, console, share)
            report["cycles"] = [{"ratios": ratios({phase: breakdown(client, cycle[phase]) for phase in MIXED_PHASES})}
                                for cycle in ids]
            sending_s = duration_s * cycles
            for phase in MIXED_PHASES:
                rate = background_rate if phase.startswith("background") else small_rate
                report[phase] = {**breakdown(client, [i for cycle in ids for i in cycle[phase]]), "rate_per_s": rate}
            for phase in ("background_alone", "background"):
                report[phase] |= {"share_of_capacity": background_share, **throughput(report[phase], sending_s)}
            report["ratios"] = ratios(report)
    finally:
        code = worker.stop()
        report["worker_exit"] = code
        if code != 0:
            console.print(f"[red]latency: worker exited with {code}[/red]\n{worker.tail(20)}")
    return report


def print_report(report: dict, console: Console) -> None:
    def ms(v):
        return "-" if v is None else f"{v:,.1f}"

    table = Table(title="latency (ms): end to end at the client; the worker's queue, inference and total "
                        "from meta; outside = end to end - worker total")
    for col in ("run", "answered", "e2e p50", "e2e p99", "queue p50", "infer p50", "worker p50", "outside p50"):
        table.add_column(col, justify="right")
    runs = {"lone": "lone 10 docs", "small_alone": "small alone", "background_alone": "background alone",
            "small_with_background": "small + bg", "background": "bg + small"}
    for name, label in runs.items():
        r = report.get(name)
        if not r:
            continue
        table.add_row(label, f"{r['answered']}/{r['sent']}", ms(r["end_to_end_ms"]["p50"]), ms(r["end_to_end_ms"]["p99"]),
                      ms(r["queue_ms"]["p50"]), ms(r["inference_ms"]["p50"]), ms(r["worker_total_ms"]["p50"]),
                      ms(r["outside_worker_ms"]["p50"]))
    console.print(table)
    ratio = report.get("lone", {}).get("end_to_end_over_inference_p50")
    if ratio is not None:
        console.print(f"lone {LONE_DOCUMENTS}-document request: end-to-end p50 / inference p50 = {ratio:.2f}")
    cap = report.get("capacity")
    if cap:
        console.print(f"capacity ({cap['docs']} documents): {cap['requests_per_s']:.2f} requests/s, "
                      f"{cap['docs_per_s']:.0f} documents/s")
    alone, loaded = report.get("small_alone"), report.get("small_with_background")
    if alone and loaded:
        console.print(f"small requests p99: alone {ms(alone['end_to_end_ms']['p99'])} ms, with the background "
                      f"{ms(loaded['end_to_end_ms']['p99'])} ms")
    r = report.get("ratios") or {}
    if r.get("small_p99_together_over_alone") and r.get("background_p99_together_over_alone"):
        bg, bg_alone = report["background"], report["background_alone"]
        console.print(f"p99 together ÷ alone: small {r['small_p99_together_over_alone']:.2f}x, background "
                      f"{r['background_p99_together_over_alone']:.2f}x; background throughput "
                      f"{bg['docs_per_s']:.0f} docs/s together, {bg_alone['docs_per_s']:.0f} alone")
    cycles = report.get("cycles") or []
    if len(cycles) > 1:
        def x(v):
            return "-" if v is None else f"{v:.2f}x"
        console.print("per cycle, p99 together ÷ alone: " + "; ".join(
            f"small {x(c['ratios']['small_p99_together_over_alone'])}, "
            f"background {x(c['ratios']['background_p99_together_over_alone'])}" for c in cycles))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bootstrap", default=None, help="Use this cluster instead of starting one.")
@click.option("--lone", default=30, show_default=True, type=click.IntRange(min=1),
              help=f"Lone {LONE_DOCUMENTS}-document requests, one at a time.")
@click.option("--lone-pause", default=0.3, show_default=True, type=click.FloatRange(min=0),
              help="Seconds the worker idles between lone requests.")
@click.option("--small-docs", default="4-15", show_default=True,
              help=f"Documents per small request ({', '.join(DISTRIBUTIONS)}, LO-HI).")
@click.option("--small-rate", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Small requests per second, alone and with the background.")
@click.option("--background-docs", default="50-100", show_default=True, help="Documents per background request.")
@click.option("--background-share", default=0.5, show_default=True, type=click.FloatRange(min=0, max=1.5),
              help="Background rate as a share of the worker's measured capacity for it.")
@click.option("--background-rate", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Background requests/s, instead of --background-share of a capacity measured first "
                   "(the same load for runs that compare two workers).")
@click.option("--capacity-s", default=30.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds of saturation to measure the capacity.")
@click.option("--capacity-concurrency", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--duration", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds of each mixed-size run (small alone, background alone, together), per cycle.")
@click.option("--cycles", default=1, show_default=True, type=click.IntRange(min=1),
              help="Take the three mixed-size runs in turn this many times, new requests each cycle; "
                   "latencies are pooled over the cycles.")
@click.option("--arrivals", default="poisson", show_default=True, type=click.Choice(["poisson", "fixed"]))
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for the last answers of a run.")
@click.option("--engine", default=None, help="RERANK_ENGINE for the worker.")
@click.option("--precision", default=None, help="RERANK_PRECISION for the worker.")
@click.option("--model", default=None, help="RERANK_MODEL (default: the packaged test model, untrained head).")
@click.option("--worker-env", multiple=True, metavar="KEY=VALUE", help="More worker settings (repeatable).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--log", "log_path", default="out/latency-worker.log", show_default=True,
              type=click.Path(dir_okay=False))
def main(bootstrap, lone, lone_pause, small_docs, small_rate, background_docs, background_share, background_rate,
         capacity_s, capacity_concurrency, duration, cycles, arrivals, timeout, engine, precision, model, worker_env,
         json_path, log_path) -> None:
    """Lone-request latency against inference time, and small requests' p99 with and without a
    background of large requests at a share of the worker's capacity."""
    console = Console(stderr=True)
    for spec, hint in ((small_docs, "--small-docs"), (background_docs, "--background-docs")):
        try:
            parse_distribution(spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    env = {"RERANK_MODEL": model or str(ensure_test_model()), "RERANK_SUMMARY_EVERY_S": "30"}
    if engine:
        env["RERANK_ENGINE"] = engine
    if precision:
        env["RERANK_PRECISION"] = precision
    for item in worker_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--worker-env")
        env[key] = value
    with contextlib.ExitStack() as stack:
        if bootstrap is None:
            bootstrap, source = stack.enter_context(kafka_cluster())
            console.print(f"latency: Kafka {bootstrap} from {source}")
        report = measure(bootstrap, env, Path(log_path), lone=lone, lone_pause_s=lone_pause, small_docs=small_docs,
                         small_rate=small_rate, background_docs=background_docs, background_share=background_share,
                         capacity_s=capacity_s, capacity_concurrency=capacity_concurrency, duration_s=duration,
                         arrivals=arrivals, timeout_s=timeout, console=console, background_rate=background_rate,
                         cycles=cycles)
    print_report(report, Console())
    write_json(json_path, report)
    lost = sum(report.get(k, {}).get("lost", 0)
               for k in ("lone", "small_alone", "background_alone", "small_with_background", "background"))
    sys.exit(1 if lost or report.get("worker_exit") != 0 else 0)


if __name__ == "__main__":
    main()
