"""``python -m loadgen.plan``: replicas, cores and partitions for a given load, from a measured run.

    python -m loadgen.plan --capacity out/scaleout.json --rate 40 --docs mix --p99 2
    python -m loadgen.plan --validate out/scaleout.json --markdown out/plan-validation.md

It reads the load test's JSON (``python -m loadgen.bench.scaleout``) and, for each thread
count measured, builds a model of one replica of that many cores from the 1-replica run:
the scoring time of a window as a function of its pairs (fitted to every window the run
saw, with the measured residuals as noise), the worker's window rules (its window
settings, recorded in the JSON) and the latency outside the worker (Kafka both ways, from
the open-loop answers). :mod:`loadgen.bench.queueing` then simulates the target load on
c such replicas, each fed its partitions' share of Poisson arrivals, and the plan is the
fewest cores whose simulated p99 meets the bound while no replica runs above
``--max-load`` of its capacity (headroom for bursts and a replica lost).

Partitions: a request's key fixes its partition, and adding partitions later moves keys
between them (ordering per key breaks across the change), so the topic is sized for growth
up front. The rule: **a multiple of the replicas needed now, from ``--growth`` (2) to twice
that many times them and at least ``--min-partitions`` (6), the one with the most
divisors** (so that most replica counts you may grow to split the partitions evenly: a
replica with one partition more than another gets that much more of the load). Where up to
5% more replicas than the fewest needed give partitions with more divisors, the plan takes
them (239 replicas would get 956 partitions; 240 get 720). Replicas beyond the partition
count idle, so the partitions also cap scaling out (and KEDA's replica maximum).

``--validate`` puts the model's predictions beside every measured run of the same JSON:
capacity (closed loop) and p50/p99 (open loop, at the rate the run sent, regular sends as
loadgen makes them), once with the 1-replica profile (what the plan uses: are replicas
independent, and does one service time fitted over every size and load hold?) and once
with the windows of that very run (is the queueing model right, given the service times
the run saw, whatever the replicas did to each other's cores?).

A client-side tool: it reads JSON and imports nothing of the engines or the worker.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from loadgen.bench.queueing import ServiceModel, SystemPrediction, WindowPolicy, mean_docs, predict, saturated_rate
from loadgen.bench.report import table, write_json, write_text
from loadgen.distributions import DISTRIBUTIONS, Mix, parse_distribution


class PlanError(click.ClickException):
    """The input cannot give a plan; the message says why."""


# --- replicas as measured ------------------------------------------------------------------

@dataclass
class Profile:
    """One replica of `threads` cores, as measured."""

    threads: int
    source: str  # which runs it was built from
    service: ServiceModel
    policy: WindowPolicy
    contended: bool  # built from a run with several replicas on the machine


def load_report(path: str) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except OSError as exc:
        raise PlanError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise PlanError(f"{path} is not JSON: {exc}") from None
    if not isinstance(report, dict) or report.get("kind") != "scaleout" or not report.get("runs"):
        raise PlanError(f"{path} is not a report of python -m loadgen.bench.scaleout (no 'runs')")
    return report


def window_policy(report: dict) -> WindowPolicy:
    """The windows the model simulates: a report of 0.2's worker names its own; since 0.3 the
    worker schedules pairs continuously, and the model keeps 0.2's default windows for it."""
    s = report["settings"]
    threshold = s.get("prefilter_threshold")
    default = WindowPolicy()
    return WindowPolicy(max_pairs=int(s.get("window_max_pairs", default.max_pairs)),
                        window_s=float(s.get("window_ms", default.window_s * 1000)) / 1000,
                        gather_s=float(s.get("window_gather_ms", 1.0)) / 1000,
                        prefilter_threshold=math.inf if threshold is None else threshold,
                        prefilter_keep=int(s["prefilter_keep"]))


def profile_of(report: dict, replicas: int, threads: int) -> Profile:
    """The model of one replica from every run of the (replicas, threads) configuration."""
    runs = [r for r in report["runs"] if r["replicas"] == replicas and r["threads"] == threads]
    windows = [w for r in runs for w in r["windows"]]
    if not windows:
        raise PlanError(f"no windows recorded for {replicas} replica(s) × {threads} thread(s)")
    open_runs = [r for r in runs if r["kind"] == "open"] or runs
    overhead = np.array([o for r in open_runs for o in r["overhead_ms"]]) / 1000
    docs = sorted({r["docs"] for r in runs})
    return Profile(threads, f"{replicas}×{threads} ({', '.join(docs)} documents)",
                   ServiceModel.fit(np.array(windows), overhead), window_policy(report), replicas > 1)


def profiles(report: dict) -> dict[int, Profile]:
    """Per thread count, the profile from its run with the fewest replicas (1 where measured:
    a replica with the machine to itself, as it would be on its own cores)."""
    out = {}
    for threads in sorted({r["threads"] for r in report["runs"]}):
        fewest = min(r["replicas"] for r in report["runs"] if r["threads"] == threads)
        out[threads] = profile_of(report, fewest, threads)
    return out


# --- partitions ------------------------------------------------------------------------------

def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def partitions_for(replicas: int, growth: float = 2.0, minimum: int = 6) -> int:
    """A multiple of `replicas` from max(growth × replicas, minimum) to twice that, the one
    with the most divisors (the smaller on a tie)."""
    lo = max(math.ceil(growth * replicas), minimum, replicas)
    candidates = [m * replicas for m in range(math.ceil(lo / replicas), 2 * lo // replicas + 1)] or \
        [math.ceil(lo / replicas) * replicas]
    return max(candidates, key=lambda p: (len(divisors(p)), -p))


# --- the plan --------------------------------------------------------------------------------

@dataclass
class Option:
    threads: int
    profile: str
    capacity_rps: float  # one replica, saturated, at the target's documents
    capacity_docs_per_s: float
    replicas: int | None
    cores: int | None
    load_over_capacity: float | None
    p50_s: float | None
    p99_s: float | None
    mean_window_requests: float | None
    why_not: str | None = None
    fewest_replicas: int | None = None  # before rounding up for the partitions' sake


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def rounded_replicas(fewest: int, growth: float, min_partitions: int, slack: float = 0.05) -> int:
    """Up to `slack` more replicas than the fewest, where that gives partitions with more
    divisors (239 replicas: 956 partitions, 6 divisors; 240: 720 partitions, 30 divisors)."""
    candidates = range(fewest, math.floor(fewest * (1 + slack)) + 1)
    return max(candidates, key=lambda c: (len(divisors(partitions_for(c, growth, min_partitions))), -c))


def plan_option(profile: Profile, rate: float, mix: Mix, p99_bound: float, max_load: float, process: str,
                rng: np.random.Generator, requests: int, growth: float = 2.0, min_partitions: int = 6) -> Option:
    """Fewest replicas of this profile meeting the bound, by doubling then bisection on c
    (each replica on its own partitions, an even split), then rounded up a little where
    that gives partitions more divisors."""
    capacity, capacity_docs = saturated_rate(profile.service, profile.policy, mix, rng)
    cache: dict[int, SystemPrediction] = {}

    def at(c: int) -> SystemPrediction:
        if c not in cache:
            cache[c] = predict(rate, mix, profile.service, profile.policy, c, c, rng, process, requests, capacity)
        return cache[c]

    def good(c: int) -> bool:
        p = at(c)
        return p.stable and p.load_over_capacity <= max_load and p.p99_s <= p99_bound

    fewest = max(1, math.ceil(rate / (capacity * max_load)))  # fewer cannot stay under max_load
    lo = hi = fewest
    while not good(hi):
        if hi >= 64 * fewest:
            floor = at(hi)
            return Option(profile.threads, profile.source, capacity, capacity_docs, None, None, None,
                          _finite(floor.p50_s), _finite(floor.p99_s), floor.mean_window_requests,
                          why_not=f"p99 stays at {floor.p99_s:.2f} s even at {hi} replicas (window_ms, one "
                                  "window's scoring and Kafka's round trip): raise the bound or shrink the windows")
        lo, hi = hi + 1, hi * 2
    while lo < hi:  # the smallest good c in (hi/2, hi]
        mid = (lo + hi) // 2
        if good(mid):
            hi = mid
        else:
            lo = mid + 1
    replicas = rounded_replicas(hi, growth, min_partitions)
    best = at(replicas)
    return Option(profile.threads, profile.source, capacity, capacity_docs, replicas, replicas * profile.threads,
                  best.load_over_capacity, best.p50_s, best.p99_s, best.mean_window_requests, fewest_replicas=hi)


def per_request_cpu_ms(report: dict, key: str) -> float | None:
    """CPU milliseconds per answered request of the broker or loadgen, median over the
    closed-loop runs (None where unmeasured)."""
    values = [r["cpu"][key] / r["requests_per_s"] * 1000 for r in report["runs"]
              if r["kind"] == "closed" and r["cpu"].get(key) is not None and r["requests_per_s"] > 0]
    return float(np.median(values)) if values else None


def plan(report: dict, rate: float, docs: str, p99_bound: float, max_load: float = 0.8, growth: float = 2.0,
         min_partitions: int = 6, process: str = "poisson", threads: list[int] | None = None, seed: int = 0,
         requests: int = 20_000, extra_ms: float = 0.0) -> dict:
    mix = parse_distribution(docs)
    rng = np.random.default_rng(seed)
    available = profiles(report)
    for profile in available.values():  # a network farther than the measuring machine's loopback
        measured = profile.service.overhead_s if profile.service.overhead_s is not None else np.zeros(1)
        profile.service.overhead_s = measured + extra_ms / 1000
    chosen = {t: p for t, p in available.items() if threads is None or t in threads}
    if not chosen:
        raise PlanError(f"no measured replica of {threads} threads in the report (measured: {sorted(available)})")
    options = [plan_option(p, rate, mix, p99_bound, max_load, process, rng, requests, growth, min_partitions)
               for p in chosen.values()]
    feasible = [o for o in options if o.replicas]
    best = min(feasible, key=lambda o: (o.cores, o.p99_s)) if feasible else None
    notes = []
    if best:
        profile = chosen[best.threads]
        policy = profile.policy
        pairs, _ = policy.pairs(np.array([hi for _, _, hi in mix]))
        if pairs.max() > 1.5 * max(profile.service.max_pairs_seen, 1):
            notes.append(f"windows of up to {pairs.max()} pairs, beyond the {profile.service.max_pairs_seen} measured: "
                         "the scoring time is extrapolated")
        if any(hi > policy.prefilter_threshold for _, _, hi in mix) and profile.service.per_prefiltered_doc_s == 0:
            notes.append("requests above the prefilter threshold, but no prefiltered window was measured: "
                         "the bi-encoder's time is not in the model (measure with such sizes)")
        if profile.contended:
            notes.append(f"the {best.threads}-thread profile comes from a run with several replicas on one machine")
    partitions = partitions_for(best.replicas, growth, min_partitions) if best else None
    report_mean_docs = mean_docs(mix)
    broker_ms, loadgen_ms = per_request_cpu_ms(report, "broker_cores"), per_request_cpu_ms(report, "loadgen_cores")
    out = {
        "target": {"rate": rate, "docs": docs, "mean_documents": report_mean_docs,
                   "docs_per_s": rate * report_mean_docs,
                   "p99_bound_s": p99_bound, "max_load": max_load, "arrivals": process, "extra_ms": extra_ms},
        "measured": {"machine": report.get("machine"), "engine": report.get("engine"),
                     "settings": report.get("settings")},
        "options": [asdict(o) for o in options],
        "recommendation": None if best is None else {
            "replicas": best.replicas, "fewest_replicas": best.fewest_replicas, "threads": best.threads,
            "cores": best.cores,
            "partitions": partitions, "p50_s": best.p50_s, "p99_s": best.p99_s,
            "load_over_capacity": best.load_over_capacity,
            "even_splits": [d for d in divisors(partitions) if d >= best.replicas],
            "most_rate_on_these_partitions": partitions * best.capacity_rps * max_load,
        },
        "partition_rule": f"a multiple of the replicas needed now, from max({growth:g}× them, {min_partitions}) to "
                          "twice that, the one with the most divisors",
        "broker_cpu_ms_per_request": broker_ms,
        "broker_cores_at_target": None if broker_ms is None else broker_ms * rate / 1000,
        "loadgen_cpu_ms_per_request": loadgen_ms,
        "notes": notes,
    }
    return out


def _s(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def plan_markdown(result: dict) -> str:
    t = result["target"]
    lines = [f"Target: {t['rate']:g} requests/s of {t['docs']} documents (mean {t['mean_documents']:.0f}, "
             f"{t['docs_per_s']:.0f} docs/s), p99 ≤ {t['p99_bound_s']:g} s, {t['arrivals']} arrivals, "
             f"no replica above {t['max_load']:.0%} of its capacity. Measured on: {result['measured']['machine']}, "
             f"{result['measured']['engine']}.", ""]
    rows = [(f"{o['threads']} thread(s)", o["profile"], f"{o['capacity_rps']:.2f}", f"{o['capacity_docs_per_s']:.0f}",
             o["replicas"] or "-", o["cores"] or "-",
             "-" if o["load_over_capacity"] is None else format(o["load_over_capacity"], ".0%"),
             _s(o["p50_s"]), _s(o["p99_s"]),
             "-" if o["mean_window_requests"] is None else format(o["mean_window_requests"], ".1f"))
            for o in result["options"]]
    lines += table(["replica", "built from", "capacity / replica (req/s)", "docs/s", "replicas", "cores",
                    "load / capacity", "p50 (s)", "p99 (s)", "requests / window"], rows, align="llrrrrrrrr")
    for o in result["options"]:
        if o["why_not"]:
            lines.append(f"\n{o['threads']} thread(s): {o['why_not']}.")
    rec = result["recommendation"]
    if rec is None:
        lines += ["", "**No plan meets the target** with the replicas measured."]
    else:
        lines += ["", f"**Plan: {rec['replicas']} replicas × {rec['threads']} thread(s)** ({rec['cores']} cores: "
                  f"RERANK_THREADS={rec['threads']}, CPU request = limit = {rec['threads']}), "
                  f"**{rec['partitions']} request partitions** (RERANK_REQUEST_PARTITIONS). Expected p50 "
                  f"{_s(rec['p50_s'])} s, p99 {_s(rec['p99_s'])} s, each replica at {rec['load_over_capacity']:.0%} "
                  "of its capacity." + (f" (The fewest that meet the target are {rec['fewest_replicas']}; "
                                        f"{rec['replicas']} give partitions with more divisors.)"
                                        if rec["fewest_replicas"] != rec["replicas"] else ""),
                  f"Partitions: {result['partition_rule']}. Replica counts that split {rec['partitions']} evenly from "
                  f"here: {', '.join(map(str, rec['even_splits']))}; at {rec['partitions']} replicas these partitions "
                  f"carry about {rec['most_rate_on_these_partitions']:.0f} requests/s (each replica at "
                  f"{t['max_load']:.0%} of its capacity); beyond that the topic needs more partitions."]
    if result["broker_cores_at_target"] is not None:
        lines.append(f"Broker: {result['broker_cpu_ms_per_request']:.2f} CPU-ms per request measured on the local "
                     f"broker, about {result['broker_cores_at_target']:.2f} cores at this rate (across the brokers).")
    for note in result["notes"]:
        lines.append(f"Note: {note}.")
    return "\n".join(lines) + "\n"


# --- validation ------------------------------------------------------------------------------

def validate(report: dict, seed: int = 0, requests: int = 20_000) -> dict:
    """The model beside every measured run: capacity for closed-loop runs, p50/p99 for
    open-loop ones; from the 1-replica profile (what a plan uses) and from the run's own
    windows (the queueing model alone, given the service times the run saw)."""
    rng = np.random.default_rng(seed)
    base = profiles(report)
    policy = window_policy(report)
    rows = []
    for run in report["runs"]:
        mix = parse_distribution(run["docs"])
        row = {"config": run["config"], "docs": run["docs"], "kind": run["kind"], "rate": run.get("rate"),
               "of_own_capacity": run.get("of_own_capacity"), "partitions": run["partitions"]}
        models = [("profile", base[run["threads"]])]
        if run["windows"]:
            models.append(("own", Profile(run["threads"], "this run", ServiceModel.fit(
                np.array(run["windows"]), np.array(run["overhead_ms"]) / 1000), policy, run["replicas"] > 1)))
        else:
            row.update(own_docs_per_s=None, own_p50_s=None, own_p99_s=None, own_ratio=None)
        for name, profile in models:
            if run["kind"] == "closed":
                _, docs_per_s = saturated_rate(profile.service, profile.policy, mix, rng)
                row["measured_docs_per_s"] = run["docs_per_s"]
                row[f"{name}_docs_per_s"] = run["replicas"] * docs_per_s
                row[f"{name}_ratio"] = row[f"{name}_docs_per_s"] / run["docs_per_s"] if run["docs_per_s"] else None
            else:
                p = predict(run["rate"], mix, profile.service, profile.policy, run["replicas"], run["partitions"], rng,
                            "regular", requests)
                row.update({"measured_p50_s": run["p50"], "measured_p99_s": run["p99"],
                            f"{name}_p50_s": _finite(p.p50_s), f"{name}_p99_s": _finite(p.p99_s)})
                row[f"{name}_ratio"] = p.p99_s / run["p99"] if run["p99"] and math.isfinite(p.p99_s) else None
        rows.append(row)
    summary = {}
    for kind, figure in (("closed", "capacity"), ("open", "p99")):
        for name in ("profile", "own"):
            ratios = [r[f"{name}_ratio"] for r in rows if r["kind"] == kind and r[f"{name}_ratio"]]
            if ratios:
                errors = np.abs(np.array(ratios) - 1)
                summary[f"{figure}_{name}"] = {"runs": len(ratios), "median_error": float(np.median(errors)),
                                               "worst_error": float(errors.max()),
                                               "median_ratio": float(np.median(ratios))}
    return {"machine": report.get("machine"), "engine": report.get("engine"), "rows": rows, "summary": summary,
            "profiles": {t: p.source for t, p in base.items()}}


def validation_markdown(result: dict) -> str:
    def ratio(v):
        return "-" if v is None else f"{v:.2f}"

    rows = []
    for r in result["rows"]:
        if r["kind"] == "closed":
            rows.append((r["config"], r["docs"], "capacity (docs/s)", f"{r['measured_docs_per_s']:.0f}",
                         f"{r['profile_docs_per_s']:.0f}", ratio(r["profile_ratio"]), _n(r["own_docs_per_s"]),
                         ratio(r["own_ratio"])))
        else:
            rows.append((r["config"], r["docs"], f"p50 / p99 (s) at {r['rate']:.2f} req/s ({r['of_own_capacity']:.0%})",
                         f"{_s(r['measured_p50_s'])} / {_s(r['measured_p99_s'])}",
                         f"{_s(r['profile_p50_s'])} / {_s(r['profile_p99_s'])}", ratio(r["profile_ratio"]),
                         f"{_s(r['own_p50_s'])} / {_s(r['own_p99_s'])}", ratio(r["own_ratio"])))
    lines = [f"Planner against the measured runs ({result['machine']}, {result['engine']}). *profile*: the model "
             "of a replica from the 1-replica runs of its thread count, as `python -m loadgen.plan` uses it (are "
             "replicas independent, is a service time fitted over all sizes and loads right?); *own*: from the "
             "windows of that very run (is the queueing model right, given the service times the run saw?). "
             "Ratio = predicted / measured.", "",
             *table(["replicas × threads", "documents", "run", "measured", "predicted (profile)", "ratio",
                     "predicted (own)", "ratio"], rows, align="lllrrrrr")]
    lines.append("")
    names = {"profile": "from the 1-replica profile", "own": "from each run's own windows"}
    for key, s in result["summary"].items():
        figure, name = key.split("_", 1)
        lines.append(f"- {figure}, {names[name]}: median error {s['median_error']:.0%}, worst {s['worst_error']:.0%} "
                     f"over {s['runs']} runs (median ratio {s['median_ratio']:.2f}).")
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--capacity", "capacity_path", type=click.Path(dir_okay=False),
              help="The load test's JSON (python -m loadgen.bench.scaleout).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Target requests/s.")
@click.option("--docs", default=None, help="Documents per request: N, LO-HI, a mix LO-HI:W,LO-HI:W, or a name "
              f"({', '.join(DISTRIBUTIONS)}).")
@click.option("--p99", "p99_bound", type=click.FloatRange(min=0, min_open=True), help="p99 bound, seconds.")
@click.option("--max-load", default=0.8, show_default=True, type=click.FloatRange(min=0, max=1, min_open=True),
              help="Highest arrival rate / capacity allowed on a replica (headroom).")
@click.option("--growth", default=2.0, show_default=True, type=click.FloatRange(min=1),
              help="Partitions: at least this many times the replicas needed now.")
@click.option("--min-partitions", default=6, show_default=True, type=click.IntRange(min=1))
@click.option("--arrivals", default="poisson", show_default=True, type=click.Choice(["poisson", "regular"]),
              help="poisson: independent callers; regular: loadgen's fixed-rate sends.")
@click.option("--threads", default=None, help="Only these replica sizes (threads), comma-separated.")
@click.option("--validate", "validate_path", type=click.Path(dir_okay=False),
              help="Instead of a plan: predictions beside every measured run of this JSON.")
@click.option("--requests", default=20_000, show_default=True, type=click.IntRange(min=1000),
              help="Simulated requests per replica (more: steadier p99, slower).")
@click.option("--extra-ms", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Added to every request's latency: the network between clients, brokers and workers, beyond "
                   "the measuring machine's loopback (its Kafka round trip is in the model already).")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the result here.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False), help="Write the table here.")
def main(capacity_path, rate, docs, p99_bound, max_load, growth, min_partitions, arrivals, threads, validate_path,
         requests, extra_ms, seed, json_path, md_path) -> None:
    """How many replicas of how many cores, how many partitions, and the p99 to expect."""
    if validate_path:
        result = validate(load_report(validate_path), seed, requests)
        text = validation_markdown(result)
    else:
        missing = [name for name, v in (("--capacity", capacity_path), ("--rate", rate), ("--docs", docs),
                                        ("--p99", p99_bound)) if v is None]
        if missing:
            raise click.UsageError(f"a plan needs {', '.join(missing)} (or --validate REPORT)")
        try:
            parse_distribution(docs)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--docs") from None
        try:
            thread_list = [int(t) for t in threads.split(",")] if threads else None
        except ValueError:
            raise click.BadParameter(f"comma-separated integers (got {threads!r})", param_hint="--threads") from None
        result = plan(load_report(capacity_path), rate, docs, p99_bound, max_load, growth, min_partitions, arrivals,
                      thread_list, seed, requests, extra_ms)
        text = plan_markdown(result)
    click.echo(text, nl=False)  # not through rich: it would wrap the tables' rows
    write_text(md_path, text)
    write_json(json_path, result, indent=1)
    sys.exit(0 if validate_path or result["recommendation"] else 2)


if __name__ == "__main__":
    main()
