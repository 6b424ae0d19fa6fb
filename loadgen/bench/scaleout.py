"""``python -m loadgen.bench.scaleout``: replicas × threads through Kafka, on one machine.

For every configuration of ``--replicas`` × ``--threads`` (RERANK_THREADS) it starts that many
worker processes in one consumer group on a request topic of ``--partitions`` partitions,
waits until every replica holds partitions (their ``/ready``), warms them up, and for each
``--docs`` size measures (each run long enough for about ``--min-answers`` answers, from
``--run-seconds`` to ``--max-run-seconds``):

* **capacity**, closed loop: enough requests in flight to keep every replica's micro-batches
  full (:data:`IN_FLIGHT_PAIRS` per replica): docs/s, p50/p99, lost;
* **latency**, open loop at ``--fractions`` of that capacity, and at the same fractions of the
  first configuration's capacity (the same absolute rates for every configuration, so that
  1 replica × 2 threads and 2 replicas × 1 thread are compared at one load).

Beside each run: the CPU the broker (the Kafka JVM), the load generator (this process), the
workers and everything else on the machine used during it, in cores (from ``/proc``
through psutil), so that on a small machine the reader sees how much of it the broker and
the client take. Each run also keeps its "windows" (answers of one worker with the same
``meta.inference_ms``: pairs, documents the prefilter read, seconds; since 0.3 the worker's
scheduler answers each request on its own, so these are single requests whose time includes
the micro-batches they shared) and each answer's latency outside the worker (end to end minus
``meta.total_ms``: Kafka both ways): ``python -m loadgen.plan`` builds its model of a replica
from them (a model of 0.2's windows: see README, "Scaling").

    python -m loadgen.bench.scaleout --json out/scaleout.json --markdown out/scaleout.md
    python -m loadgen.bench.scaleout --quick          # a smoke test: 1×1 and 2×1, tiny runs

The engine is the worker's default unless ``--engine`` names another; the model is the
local test cross-encoder (MiniLM-L6, untrained head: same cost as ms-marco-MiniLM-L-6-v2).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import psutil
from rich.console import Console

from engines.testmodel import ensure_test_model
from loadgen.bench.machine import machine, summary
from loadgen.bench.report import command, table, write_json, write_text
from loadgen.client import RerankClient, SentRequest
from loadgen.cluster.local_kafka import REPO, kafka_cluster
from loadgen.cluster.workers import WorkerProcess, worker_topics
from loadgen.run import LoadResult, RequestFactory, parse_distribution, run_load
from streams.settings import WorkerSettings

#: samples kept per run (windows, per-answer overheads): enough for a model, small JSON
KEEP_SAMPLES = 3000


@dataclass(frozen=True)
class Config:
    replicas: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.replicas}×{self.threads}"


# --- CPU accounting ----------------------------------------------------------------------

def broker_process(bootstrap: str) -> psutil.Process | None:
    """The local broker's process: the pid file of deploy/kafka/kafka.sh, else whichever
    process of ours listens on the bootstrap port; None for a broker elsewhere."""
    port = bootstrap.split(",")[0].rsplit(":", 1)[-1]
    pidfile = REPO / ".kafka" / port / "kafka.pid"
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        return psutil.Process(int(pidfile.read_text().strip()))
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and str(conn.laddr.port) == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


def _cpu_s(proc: psutil.Process | None) -> float | None:
    if proc is None:
        return None
    try:
        times = proc.cpu_times()
        return times.user + times.system
    except psutil.Error:
        return None


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


class CpuMeter:
    """CPU seconds (utime + stime) of the broker, this process and the workers, and of the
    whole machine, between two snapshots; reported in cores (CPU seconds per second)."""

    def __init__(self, broker: psutil.Process | None, workers: list[WorkerProcess]) -> None:
        self.broker = broker
        self.me = psutil.Process()
        self.workers = [psutil.Process(w.proc.pid) for w in workers]

    def snapshot(self) -> dict:
        return {"t": time.monotonic(), "broker": _cpu_s(self.broker), "loadgen": _cpu_s(self.me),
                "workers": [_cpu_s(w) for w in self.workers], "machine": _machine_busy_s()}

    @staticmethod
    def cores(before: dict, after: dict) -> dict:
        wall = max(after["t"] - before["t"], 1e-9)

        def rate(a, b):
            return None if a is None or b is None else (b - a) / wall

        workers = [rate(a, b) for a, b in zip(before["workers"], after["workers"])]
        out = {"wall_s": wall, "machine_cores": psutil.cpu_count() or 1,
               "broker_cores": rate(before["broker"], after["broker"]),
               "loadgen_cores": rate(before["loadgen"], after["loadgen"]),
               "worker_cores": workers,
               "workers_cores": sum(w for w in workers if w is not None),
               "machine_busy_cores": rate(before["machine"], after["machine"])}
        ours = out["workers_cores"] + (out["broker_cores"] or 0) + (out["loadgen_cores"] or 0)
        out["other_cores"] = max(0.0, out["machine_busy_cores"] - ours)  # other jobs on the machine
        return out


# --- what the answers say ----------------------------------------------------------------

def windows_and_overheads(result: LoadResult, snapshot: dict[str, SentRequest],
                          rng: np.random.Generator) -> tuple[list[list[float]], list[float], dict[str, int]]:
    """The run's windows as [pairs, documents the prefilter read, seconds the window kept the
    scoring loop], each answer's latency outside its window wait and that time (ms), and the
    answers per worker.

    Answers of one window share the worker and its inference_ms. The loop builds the
    window's answers one after the other before it takes the next window, so a window keeps
    it for inference_ms plus the answer building of its last answer (total_ms - queue_ms -
    inference_ms grows along the window)."""
    windows: dict[tuple[str, float], list[float]] = {}
    overheads, by_worker = [], Counter()
    for row in result.per_answer:
        answer = snapshot[row["request_id"]].answers[0]
        meta = answer.response.get("meta")
        if answer.response.get("status") != "ok" or not isinstance(meta, dict):
            continue
        by_worker[meta["worker"]] += 1
        building_ms = max(0.0, meta["total_ms"] - meta["queue_ms"] - meta["inference_ms"])
        window = windows.setdefault((meta["worker"], meta["inference_ms"]), [0, 0, meta["inference_ms"], 0.0])
        window[0] += meta["scored_by_cross_encoder"]
        window[1] += meta["documents"] if meta["prefiltered"] else 0
        window[3] = max(window[3], building_ms)
        overheads.append(row["latency_ms"] - meta["total_ms"])
    rows = [[pairs, docs, (inference_ms + building_ms) / 1000]
            for pairs, docs, inference_ms, building_ms in windows.values()]
    if len(rows) > KEEP_SAMPLES:
        rows = [rows[i] for i in sorted(rng.choice(len(rows), KEEP_SAMPLES, replace=False))]
    if len(overheads) > KEEP_SAMPLES:
        overheads = rng.choice(overheads, KEEP_SAMPLES, replace=False).tolist()
    return rows, overheads, dict(by_worker)


def run_figures(result: LoadResult) -> dict:
    keep = ("mode", "sent", "answered", "lost", "duplicates", "errors", "elapsed_s", "requests_per_s", "docs_per_s",
            "p50", "p90", "p99", "max", "breakdown", "client_overhead")
    return {k: getattr(result, k) for k in keep}


# --- the run -----------------------------------------------------------------------------

def wait_for_partitions(workers: list[WorkerProcess], partitions: int, timeout_s: float = 180.0) -> list[int]:
    """Waits until every replica is ready and holds partitions, and together they hold all
    of them, twice in a row (a replica reports its assignment only after a rebalance ends)."""
    deadline = time.monotonic() + timeout_s
    settled = 0
    held: list[int | None] = []
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"{w.name} exited with {w.proc.returncode}:\n{w.tail()}")
        states = [w.status() for w in workers]
        held = [s.get("partitions") if s else None for s in states]
        even = all(h for h in held) and sum(held) == partitions
        settled = settled + 1 if even else 0
        if settled >= 2:
            return held
        time.sleep(0.5)
    raise RuntimeError(f"replicas did not share the {partitions} partitions within {timeout_s:.0f} s "
                       f"(held: {held}):\n" + "\n".join(f"--- {w.name}\n{w.tail(15)}" for w in workers))


def concurrency_for(bucket: str, replicas: int, settings: WorkerSettings, in_flight_pairs: int = 1024) -> int:
    """Requests in flight that keep `replicas` replicas' micro-batches full: IN_FLIGHT_PAIRS
    pairs each, so that the scheduler always has pairs of fitting lengths to fill a micro-batch
    with. More would only lengthen the queue."""
    mix = parse_distribution(bucket)
    total = sum(w for w, _, _ in mix)
    engine = settings.engine_config
    pairs = sum(w * min((lo + hi) / 2, engine.prefilter_keep if (lo + hi) / 2 > engine.prefilter_threshold
                        else math.inf) for w, lo, hi in mix) / total
    return replicas * max(4, math.ceil(in_flight_pairs / max(pairs, 1)))


def measure_config(bootstrap: str, config: Config, buckets: list[str], base_env: dict[str, str],
                   settings: WorkerSettings, args: dict, reference: dict[str, float], logs: Path,
                   broker: psutil.Process | None, console: Console) -> tuple[list[dict], dict]:
    """Starts the configuration's replicas, measures every bucket, stops them."""
    tag = uuid.uuid4().hex[:8]
    topics = worker_topics("so", tag)
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **base_env, **topics, "RERANK_THREADS": str(config.threads),
           "RERANK_REQUEST_PARTITIONS": str(args["partitions"])}
    workers = [WorkerProcess(env, logs / f"{config.label}-{i}-{tag}.log", f"so-{tag}-{i}")
               for i in range(config.replicas)]
    runs: list[dict] = []
    rng = np.random.default_rng(0)
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(600)
        held = wait_for_partitions(workers, args["partitions"])
        engine = workers[0].status()["engine"]
        console.rule(f"{config.replicas} replica(s) × {config.threads} thread(s): {engine}, partitions held {held}")
        meter = CpuMeter(broker, workers)
        info = {"replicas": config.replicas, "threads": config.threads, "label": config.label, "engine": engine,
                "partitions_held": held, "logs": [str(w.log_path) for w in workers]}
        with RerankClient(bootstrap, topics["RERANK_REQUEST_TOPIC"], [topics["RERANK_RESPONSE_TOPIC"]]) as client:
            for bucket in buckets:
                factory = RequestFactory(parse_distribution(bucket), seed=11)
                in_flight = args["concurrency"] or concurrency_for(bucket, config.replicas, settings,
                                                                   args["in_flight_pairs"])
                common = {"config": config.label, "replicas": config.replicas, "threads": config.threads,
                          "engine": engine, "docs": bucket, "partitions": args["partitions"]}

                def measured(kind: str, expected_rps: float | None, **load) -> dict:
                    seconds = run_length(expected_rps, args)
                    before = meter.snapshot()
                    result = run_load(client, factory, duration_s=seconds, timeout_s=args["timeout"],
                                      show_progress=False, **load)
                    cpu = CpuMeter.cores(before, meter.snapshot())
                    windows, overheads, by_worker = windows_and_overheads(result, client.snapshot(), rng)
                    row = {**common, "kind": kind, **load, "duration_s": seconds, **run_figures(result), "cpu": cpu,
                           "answers_by_worker": by_worker, "windows": windows, "overhead_ms": overheads}
                    how = f"{load['rate']:.2f} req/s" if "rate" in load else f"{load['concurrency']} in flight"
                    console.print(f"  {bucket:>8} {kind:>6} {how}, {seconds:.0f} s: {result.docs_per_s:7.1f} docs/s, "
                                  f"p50 {result.p50 or 0:.2f} s, p99 {result.p99 or 0:.2f} s, lost {result.lost}; "
                                  f"cores: workers {cpu['workers_cores']:.2f}, broker {_fmt(cpu['broker_cores'])}, "
                                  f"loadgen {_fmt(cpu['loadgen_cores'])}, other {cpu['other_cores']:.2f}")
                    return row

                warm_rps = None
                if args["warmup_seconds"] > 0:  # first windows compile kernels, fill caches
                    warm = run_load(client, factory, concurrency=in_flight, duration_s=args["warmup_seconds"],
                                    timeout_s=args["timeout"], show_progress=False)
                    warm_rps = warm.requests_per_s if warm.answered else None
                closed = measured("closed", warm_rps, concurrency=in_flight)
                runs.append(closed)
                capacity = closed["requests_per_s"]
                reference.setdefault(bucket, capacity)
                rates = [("own", f, f * capacity) for f in args["fractions"]]
                if not math.isclose(reference[bucket], capacity):
                    rates += [("reference", f, f * reference[bucket]) for f in args["fractions"]]
                for basis, fraction, rate in rates:
                    if rate <= 0:
                        continue
                    if rate > 0.95 * capacity:  # beyond what this configuration sustains: a queue that only grows
                        console.print(f"  {bucket:>8} skipped {rate:.2f} req/s: above 95% of this capacity")
                        continue
                    row = measured("open", rate, rate=rate)
                    row.update(basis=basis, fraction=fraction, of_own_capacity=rate / capacity)
                    runs.append(row)
    finally:
        for w in workers:
            code = w.stop()
            if code not in (0, None):
                console.print(f"[red]{w.name} exited with {code}[/red]\n{w.tail(15)}")
    return runs, info


def run_length(expected_rps: float | None, args: dict) -> float:
    """Seconds for a run to see about --min-answers answers at the rate expected, within
    --run-seconds and --max-run-seconds (large requests come slowly on a few cores)."""
    wanted = args["min_answers"] / expected_rps if expected_rps else args["max_run_seconds"]
    return min(max(args["run_seconds"], wanted), max(args["max_run_seconds"], args["run_seconds"]))


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else f"{v:{spec}}"


# --- the report ----------------------------------------------------------------------------

def comparisons(runs: list[dict]) -> list[dict]:
    """1 replica × k threads against k replicas × 1 thread (k ≥ 2), per documents size:
    capacity, latency at the shared reference rates and at the largest fraction of each's own
    capacity."""
    out = []
    closed = {(r["replicas"], r["threads"], r["docs"]): r for r in runs if r["kind"] == "closed"}
    for (replicas, threads, docs), one in closed.items():
        if replicas != 1 or threads < 2 or (threads, 1, docs) not in closed:
            continue
        many = closed[(threads, 1, docs)]

        def open_runs(config: dict, basis: str) -> list[dict]:
            return [r for r in runs if r["kind"] == "open" and r["config"] == config["config"] and r["docs"] == docs
                    and (r["basis"] == basis or (basis == "reference" and r.get("shared_reference")))]

        rows = [{"figure": "saturated docs/s", "a": one["docs_per_s"], "b": many["docs_per_s"], "unit": "docs/s"}]
        for ra in open_runs(one, "reference"):
            rb = next((r for r in open_runs(many, "reference") if math.isclose(r["rate"], ra["rate"])), None)
            if rb:
                rows.append({"figure": f"p50 / p99 at {ra['rate']:.2f} req/s", "a": (ra["p50"], ra["p99"]),
                             "b": (rb["p50"], rb["p99"]), "unit": "s"})
        own_a, own_b = open_runs(one, "own"), open_runs(many, "own")
        if own_a and own_b:
            ra, rb = max(own_a, key=lambda r: r["fraction"]), max(own_b, key=lambda r: r["fraction"])
            rows.append({"figure": f"p50 / p99 at {ra['fraction']:.0%} of own capacity", "a": (ra["p50"], ra["p99"]),
                         "b": (rb["p50"], rb["p99"]), "unit": "s", "rates": (ra["rate"], rb["rate"])})
        out.append({"docs": docs, "a": one["config"], "b": many["config"], "rows": rows})
    return out


def mark_shared_reference(runs: list[dict]) -> None:
    """The first configuration's own-fraction runs are the reference rates of the others."""
    first = runs[0]["config"] if runs else None
    for r in runs:
        if r["kind"] == "open" and r["config"] == first:
            r["shared_reference"] = True


def markdown(report: dict) -> str:
    runs = report["runs"]
    s = report["settings"]
    lines = [f"Machine: {report['machine']}. Engine: {report['engine']}. Model: {report['model_note']}. "
             f"Scheduler: {s.get('scheduler_policy', 'windows of 0.2')}; {report['partitions']} request "
             f"partitions; runs of {report['run_seconds']:g} to {report['max_run_seconds']:g} s (about "
             f"{report['min_answers']} answers each). Command: `{report['command']}` "
             f"({report['wall_s'] / 60:.0f} min).", "",
             "**Capacity** (closed loop, enough pairs in flight to fill every replica's micro-batches; CPU in cores, "
             f"of {report['cores']}):", ""]
    first: dict[str, float] = {}
    closed = []
    for r in (r for r in runs if r["kind"] == "closed"):
        base = first.setdefault(r["docs"], r["docs_per_s"])
        c = r["cpu"]
        closed.append((r["docs"], r["config"], f"{r['docs_per_s']:.0f}", f"{r['docs_per_s'] / base:.2f}",
                       f"{r['requests_per_s']:.2f}", _fmt(r["p50"]), _fmt(r["p99"]), r["concurrency"], r["lost"],
                       f"{c['workers_cores']:.2f}", _fmt(c["broker_cores"]), _fmt(c["loadgen_cores"]),
                       f"{c['other_cores']:.2f}"))
    lines += table(["documents", "replicas × threads", "docs/s", "× 1st", "req/s", "p50 (s)", "p99 (s)", "in flight",
                    "lost", "workers", "broker", "loadgen", "other"], closed, align="llrrrrrrrrrrr")
    opened = [(r["docs"], r["config"], f"{r['rate']:.2f}", f"{r['of_own_capacity']:.0%}", f"{r['docs_per_s']:.0f}",
               _fmt(r["p50"]), _fmt(r["p99"]), r["lost"], f"{r['cpu']['workers_cores']:.2f}",
               _fmt(r["cpu"]["broker_cores"]), _fmt(r["cpu"]["loadgen_cores"]))
              for r in runs if r["kind"] == "open"]
    lines += ["", "**Latency** (open loop, regular sends at the rate):", "",
              *table(["documents", "replicas × threads", "req/s", "of own capacity", "docs/s", "p50 (s)", "p99 (s)",
                      "lost", "workers", "broker", "loadgen"], opened, align="llrrrrrrrrr")]
    for comp in report["comparisons"]:
        pairs = [(row["figure"], *((f"{row['a']:.0f}", f"{row['b']:.0f}") if row["unit"] == "docs/s" else
                                   (f"{_fmt(x[0])} / {_fmt(x[1])}" for x in (row["a"], row["b"]))))
                 for row in comp["rows"]]
        lines += ["", f"**{comp['a']} against {comp['b']}** ({comp['docs']} documents; replicas × threads):", "",
                  *table(["", comp["a"], comp["b"]], pairs, align="lrr")]
    cpu = report["cpu_summary"]
    if cpu:
        lines += ["", f"At saturation the broker used {cpu['broker']} cores, the load generator {cpu['loadgen']} "
                  f"and the workers {cpu['workers']} of this machine's {report['cores']} "
                  f"(everything else: {cpu['other']})."]
    lost = sum(r["lost"] for r in runs)
    lines += ["", f"Lost: {lost} of {sum(r['sent'] for r in runs)} requests."]
    return "\n".join(lines) + "\n"


def cpu_summary(runs: list[dict]) -> dict:
    closed = [r["cpu"] for r in runs if r["kind"] == "closed"]
    if not closed:
        return {}

    def span(key: str) -> str:
        values = [c[key] for c in closed if c[key] is not None]
        if not values:
            return "unmeasured (broker not on this machine)"
        lo, hi = min(values), max(values)
        cores = closed[0]["machine_cores"]
        return f"{lo:.2f}–{hi:.2f} ({lo / cores:.0%}–{hi / cores:.0%})"

    return {k: span(f"{k}_cores") for k in ("broker", "loadgen", "workers", "other")}


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise click.BadParameter(f"comma-separated positive integers, e.g. 1,2 (got {text!r})", param_hint=name)
    return values


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--replicas", default="1,2", show_default=True, help="Replica counts, comma-separated.")
@click.option("--threads", default="1,2", show_default=True, help="RERANK_THREADS per replica, comma-separated.")
@click.option("--docs", default="4-15,50-100,300-1000", show_default=True,
              help="Documents per request, one size per measurement (names, LO-HI; ';' between mixes).")
@click.option("--partitions", type=click.IntRange(min=1), default=None,
              help="Request-topic partitions [default: a multiple of every replica count, at least 6].")
@click.option("--run-seconds", default=20.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Shortest measured run.")
@click.option("--min-answers", default=100, show_default=True, type=click.IntRange(min=1),
              help="A run lasts long enough for about this many answers at its expected rate...")
@click.option("--max-run-seconds", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="...but no longer than this.")
@click.option("--warmup-seconds", default=5.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--fractions", default="0.5,0.8", show_default=True,
              help="Open-loop rates as fractions of the measured capacity.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Closed-loop requests in flight [default: 1,024 pairs' worth per replica].")
@click.option("--engine", default=None, help="RERANK_ENGINE (default: the worker's own default).")
@click.option("--precision", default=None, help="RERANK_PRECISION for the workers.")
@click.option("--model", default=None, help="RERANK_MODEL (default: the local test model, untrained head).")
@click.option("--bootstrap", default=None, help="Use this cluster instead of starting one.")
@click.option("--quick", is_flag=True,
              help="Smoke test: 1×1 and 2×1, 2-4 documents, 64 pairs in flight, 3-s runs, one fraction.")
@click.option("--json", "json_path", default="out/scaleout.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--markdown", "md_path", default="out/scaleout.md", show_default=True, type=click.Path(dir_okay=False))
@click.option("--logs", "logs_dir", default=None, type=click.Path(file_okay=False),
              help="Worker logs here [default: a new temporary folder].")
def main(replicas, threads, docs, partitions, run_seconds, min_answers, max_run_seconds, warmup_seconds, fractions,
         concurrency, engine, precision, model, bootstrap, quick, json_path, md_path,
         logs_dir) -> None:
    """Replicas × threads through Kafka: capacity, latency, and the broker's and client's CPU beside them."""
    console = Console()
    if quick:
        replicas, threads, docs, run_seconds, warmup_seconds, fractions = "1,2", "1", "2-4", 3.0, 1.0, "0.5"
        max_run_seconds = 3.0
    replica_counts, thread_counts = _ints(replicas, "--replicas"), _ints(threads, "--threads")
    buckets = [b.strip() for b in docs.split(";" if ";" in docs else ",") if b.strip()]
    for bucket in buckets:
        try:
            parse_distribution(bucket)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--docs") from None
    try:
        fraction_list = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        raise click.BadParameter(f"comma-separated numbers (got {fractions!r})", param_hint="--fractions") from None
    if partitions is None:
        lcm = math.lcm(*replica_counts)
        partitions = lcm * math.ceil(6 / lcm)
    if partitions < max(replica_counts):
        raise click.BadParameter(f"{partitions} partitions cannot serve {max(replica_counts)} replicas: the extra "
                                 "ones would idle", param_hint="--partitions")
    configs = [Config(r, t) for r in sorted(set(replica_counts)) for t in sorted(set(thread_counts))]
    model = model or os.environ.get("RERANK_MODEL") or str(ensure_test_model())
    model_note = model if model != str(ensure_test_model()) else \
        "local MiniLM-L6 test cross-encoder (untrained head: same cost as ms-marco-MiniLM-L-6-v2)"
    base_env = {"RERANK_MODEL": model}
    base_env.update({k: str(v) for k, v in (("RERANK_ENGINE", engine), ("RERANK_PRECISION", precision))
                     if v is not None})
    settings = WorkerSettings(**{k.removeprefix("RERANK_").lower(): v for k, v in base_env.items()})
    args = {"partitions": partitions, "run_seconds": run_seconds, "min_answers": min_answers,
            "max_run_seconds": max_run_seconds, "warmup_seconds": warmup_seconds,
            "fractions": fraction_list, "concurrency": concurrency, "in_flight_pairs": 64 if quick else 1024,
            "timeout": max(120.0, 4 * max(run_seconds, max_run_seconds))}
    longest = max(run_seconds, max_run_seconds)
    per_bucket_s = (run_seconds, longest)
    minutes = [len(configs) * (len(buckets) * (s * (1 + 2 * len(fraction_list)) + warmup_seconds + 10) + 40) / 60
               for s in per_bucket_s]
    console.print(f"{len(configs)} configurations × {len(buckets)} sizes: {minutes[0]:.0f} to {minutes[1]:.0f} min")
    logs = Path(logs_dir) if logs_dir else Path(tempfile.mkdtemp(prefix="rerank-scaleout-"))
    started = time.monotonic()
    runs: list[dict] = []
    infos: list[dict] = []
    reference: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        source = "--bootstrap"
        if bootstrap is None:
            bootstrap, source = stack.enter_context(kafka_cluster())
        broker = broker_process(bootstrap)
        console.print(f"kafka: {bootstrap} ({source}); broker process: "
                      f"{broker.pid if broker else 'not on this machine: its CPU is not measured'}; "
                      f"machine: {summary(machine())}; worker logs: {logs}")
        for config in configs:
            config_runs, info = measure_config(bootstrap, config, buckets, base_env, settings, args, reference, logs,
                                               broker, console)
            runs += config_runs
            infos.append(info)
    mark_shared_reference(runs)
    engines_seen = sorted({i["engine"] for i in infos})
    report = {
        "kind": "scaleout", "version": 1, "machine": summary(machine()), "cores": psutil.cpu_count() or 1,
        "engine": ", ".join(engines_seen), "engine_requested": engine or "worker default", "model": model,
        "model_note": model_note, "partitions": partitions, "run_seconds": run_seconds,
        "max_run_seconds": max(run_seconds, max_run_seconds), "min_answers": min_answers, "fractions": fraction_list,
        "settings": {"scheduler_policy": settings.engine_config.scheduler_policy,
                     "prefilter_threshold": (settings.engine_config.prefilter_threshold
                                             if settings.engine_config.engine != "bi-encoder" else None),
                     "prefilter_keep": settings.engine_config.prefilter_keep,
                     "max_inflight_pairs": settings.max_inflight_pairs},
        "command": command("loadgen.bench.scaleout"),
        "configs": infos, "runs": runs, "comparisons": comparisons(runs), "cpu_summary": cpu_summary(runs),
        "wall_s": time.monotonic() - started,
    }
    write_json(json_path, report, indent=1)  # thousands of samples: one space of indent
    write_text(md_path, markdown(report))
    print(markdown(report))  # not through rich: it would wrap the tables' rows
    console.print(f"wrote {json_path} and {md_path} in {report['wall_s'] / 60:.1f} min")
    sys.exit(1 if any(r["lost"] for r in runs) else 0)


if __name__ == "__main__":
    main()
