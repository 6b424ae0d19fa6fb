"""``python -m loadgen.bench.soak``: steady load on one worker for minutes; does it drift?

    python -m loadgen.bench.soak --minutes 10 --json out/soak.json --plot out/soak.png

Starts a broker (``KAFKA_BOOTSTRAP_SERVERS``, else testcontainers or the local Apache
Kafka) unless ``--bootstrap`` names one, starts one worker, keeps ``--concurrency``
requests in flight (closed loop: throughput is what the worker can do) or sends ``--rate``
requests/s (open loop), and reports per interval (default a minute): answers/s, latency
p50/p99 and the worker's RSS. Drift is last-interval throughput / first-interval
throughput; RSS growth is the last sample minus the first one after the first interval
(the first interval warms caches and allocators), and the slope of a line fitted to the
RSS samples after it.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from engines.testmodel import ensure_test_model
from loadgen.bench.report import write_json
from loadgen.client import RerankClient
from loadgen.cluster.local_kafka import kafka_cluster
from loadgen.cluster.workers import WorkerProcess, worker_topics
from loadgen.run import DISTRIBUTIONS, LoadResult, RequestFactory, parse_distribution, run_load


@dataclass
class Interval:
    start_s: float
    end_s: float
    answered: int
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    rss_mib: float | None  # last sample in the interval


@dataclass
class SoakReport:
    duration_s: float
    interval_s: float
    sent: int
    answered: int
    lost: int
    duplicates: int
    errors: dict[str, int]
    throughput_drift: float | None  # last interval's answers/s over the first's
    rss_start_mib: float | None
    rss_end_mib: float | None
    rss_growth_mib: float | None
    rss_slope_mib_per_min: float | None
    intervals: list[Interval]
    rss_samples: list[tuple[float, float]]  # (seconds since start, MiB)

    def to_json(self) -> dict:
        return asdict(self)


def soak_report(timeline: list[tuple[float, float]], rss_samples: list[tuple[float, float]], duration_s: float,
                interval_s: float, sent: int = 0, lost: int = 0, duplicates: int = 0,
                errors: dict[str, int] | None = None) -> SoakReport:
    """Bins first answers (seconds since start, latency s) and RSS samples (seconds, MiB)
    into intervals of the send period and works out drift and growth."""
    n = max(1, int(round(duration_s / interval_s)))
    t = np.array([x for x, _ in timeline])
    lat = np.array([y for _, y in timeline]) * 1000
    intervals = []
    for i in range(n):
        lo, hi = i * interval_s, (i + 1) * interval_s
        sel = (t >= lo) & (t < hi) if i < n - 1 else (t >= lo) & (t < max(hi, duration_s))
        rss_in = [m for s, m in rss_samples if lo <= s < hi]
        intervals.append(Interval(
            start_s=lo, end_s=hi, answered=int(sel.sum()), requests_per_s=float(sel.sum()) / interval_s,
            p50_ms=float(np.percentile(lat[sel], 50)) if sel.any() else None,
            p99_ms=float(np.percentile(lat[sel], 99)) if sel.any() else None,
            rss_mib=rss_in[-1] if rss_in else None))
    first, last = intervals[0].requests_per_s, intervals[-1].requests_per_s
    drift = last / first if first > 0 and n > 1 else None
    settled = [(s, m) for s, m in rss_samples if s >= interval_s] if n > 1 else list(rss_samples)
    growth = slope = start = end = None
    if settled:
        start, end = settled[0][1], settled[-1][1]
        growth = end - start
        if len(settled) >= 3 and settled[-1][0] > settled[0][0]:
            xs = np.array([s for s, _ in settled]) / 60
            slope = float(np.polyfit(xs, np.array([m for _, m in settled]), 1)[0])
    return SoakReport(duration_s=duration_s, interval_s=interval_s, sent=sent, answered=len(timeline), lost=lost,
                      duplicates=duplicates, errors=dict(errors or {}), throughput_drift=drift,
                      rss_start_mib=start, rss_end_mib=end, rss_growth_mib=growth, rss_slope_mib_per_min=slope,
                      intervals=intervals, rss_samples=list(rss_samples))


def print_report(report: SoakReport, console: Console) -> None:
    def fmt(v, spec=".1f", unit=""):
        return "-" if v is None else f"{v:{spec}}{unit}"

    table = Table(title=f"soak: {report.duration_s / 60:.1f} min, {report.interval_s:.0f}-s intervals")
    for col in ("from (s)", "answers", "req/s", "p50", "p99", "RSS"):
        table.add_column(col, justify="right")
    for iv in report.intervals:
        table.add_row(f"{iv.start_s:.0f}", str(iv.answered), f"{iv.requests_per_s:.2f}", fmt(iv.p50_ms, ".0f", " ms"),
                      fmt(iv.p99_ms, ".0f", " ms"), fmt(iv.rss_mib, ".0f", " MiB"))
    console.print(table)
    console.print(f"sent {report.sent}, answered {report.answered}, lost {report.lost}, "
                  f"duplicates {report.duplicates}, errors {report.errors or 'none'}")
    console.print(f"throughput drift (last / first interval): {fmt(report.throughput_drift, '.3f')}; "
                  f"RSS {fmt(report.rss_start_mib, '.0f')} -> {fmt(report.rss_end_mib, '.0f')} MiB "
                  f"(growth {fmt(report.rss_growth_mib, '+.1f')} MiB, slope {fmt(report.rss_slope_mib_per_min, '+.2f')} "
                  "MiB/min after the first interval)")


def plot_report(report: SoakReport, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    mids = [(iv.start_s + iv.end_s) / 2 / 60 for iv in report.intervals]
    ax1.plot(mids, [iv.requests_per_s for iv in report.intervals], "o-", label="answers/s")
    ax1b = ax1.twinx()
    ax1b.plot(mids, [iv.p99_ms for iv in report.intervals], "s--", color="tab:red", label="p99 ms")
    ax1.set(xlabel="minutes", ylabel="answers/s", title="Throughput and p99 per interval")
    ax1b.set_ylabel("p99 latency (ms)")
    ax2.plot([s / 60 for s, _ in report.rss_samples], [m for _, m in report.rss_samples])
    ax2.set(xlabel="minutes", ylabel="RSS (MiB)", title="Worker resident memory")
    fig.suptitle(f"soak: drift {report.throughput_drift or float('nan'):.3f}, RSS growth "
                 f"{report.rss_growth_mib or 0:+.0f} MiB, lost {report.lost}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class RssSampler(threading.Thread):
    def __init__(self, worker: WorkerProcess, every_s: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.worker, self.every_s = worker, every_s
        self.samples: list[tuple[float, float]] = []
        self.started_at = time.monotonic()
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic() - self.started_at, self.worker.rss_bytes() / 2**20))
            except OSError:
                return
            if self._done.wait(self.every_s):
                return

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def soak(bootstrap: str, minutes: float, interval_s: float, concurrency: int | None, rate: float | None,
         docs: str, worker_env: dict[str, str], log_path: Path, show_progress: bool = True,
         console: Console | None = None) -> SoakReport:
    console = console or Console(stderr=True)
    topics = worker_topics("soak")
    worker = WorkerProcess({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **topics, **worker_env}, log_path, "soak-worker")
    worker.start()
    try:
        console.print(f"soak: starting a worker on {bootstrap} (log {log_path})")
        worker.wait_ready()
        with RerankClient(bootstrap, topics["RERANK_REQUEST_TOPIC"], [topics["RERANK_RESPONSE_TOPIC"]]) as client:
            sampler = RssSampler(worker, every_s=min(5.0, interval_s / 4))
            sampler.start()
            result: LoadResult = run_load(client, RequestFactory(parse_distribution(docs), seed=0),
                                          rate=rate, concurrency=None if rate else concurrency,
                                          duration_s=minutes * 60, timeout_s=60, show_progress=show_progress)
            sampler.stop()
        # the load started within a moment of the sampler: one clock for both is close enough
        return soak_report(result.timeline, sampler.samples, minutes * 60, interval_s, sent=result.sent,
                           lost=result.lost, duplicates=result.duplicates, errors=result.errors)
    finally:
        code = worker.stop()
        if code != 0:
            console.print(f"[red]soak: worker exited with {code}[/red]\n{worker.tail(20)}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--interval-s", default=None, type=click.FloatRange(min=1),
              help="Sampling interval; default 60 s, or a fifth of the run when that is shorter.")
@click.option("--bootstrap", default=None, help="Use this cluster instead of starting one.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(min=1),
              help="Closed loop: requests in flight (throughput = what the worker sustains).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Open loop instead: requests/s.")
@click.option("--docs", default="4-15", show_default=True, help=f"Documents per request ({', '.join(DISTRIBUTIONS)}, LO-HI).")
@click.option("--engine", default=None, help="RERANK_ENGINE for the worker (default: the worker's own default).")
@click.option("--precision", default=None, help="RERANK_PRECISION for the worker.")
@click.option("--model", default=None, help="RERANK_MODEL (default: the packaged test model, untrained head).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG (throughput, RSS) here.")
@click.option("--log", "log_path", default="out/soak-worker.log", show_default=True, type=click.Path(dir_okay=False))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(minutes, interval_s, bootstrap, concurrency, rate, docs, engine, precision, model, json_path, plot_path,
         log_path, quiet) -> None:
    """Steady load on one worker; reports throughput drift and worker RSS growth over time."""
    console = Console(stderr=True)
    try:
        parse_distribution(docs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--docs") from None
    interval_s = interval_s or min(60.0, minutes * 60 / 5)
    if model is None:
        model = str(ensure_test_model())
    env = {"RERANK_MODEL": model, "RERANK_SUMMARY_EVERY_S": "30"}
    if engine:
        env["RERANK_ENGINE"] = engine
    if precision:
        env["RERANK_PRECISION"] = precision
    with contextlib.ExitStack() as stack:
        if bootstrap is None:
            bootstrap, source = stack.enter_context(kafka_cluster())
            console.print(f"soak: Kafka {bootstrap} from {source}")
        report = soak(bootstrap, minutes, interval_s, concurrency, rate, docs, env, Path(log_path),
                      show_progress=not quiet, console=console)
    print_report(report, Console())
    write_json(json_path, report.to_json())
    if plot_path:
        Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
        plot_report(report, plot_path)
    sys.exit(1 if report.lost else 0)


if __name__ == "__main__":
    main()
