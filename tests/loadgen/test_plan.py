"""python -m loadgen.plan: profiles from a load test's JSON, the partition rule, the plan,
the validation table and the command line. The reports here are made from a known
service time, so that the right answers are known."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from loadgen.bench.plan import (DISTRIBUTIONS, PlanError, divisors, load_report, parse_distribution, partitions_for,
                                plan, plan_markdown, profiles, rounded_replicas, validate, validation_markdown)
from loadgen.bench.queueing import ServiceModel, WindowPolicy, predict, saturated_rate

SETTINGS = {"window_max_pairs": 512, "window_ms": 20.0, "prefilter_threshold": 100, "prefilter_keep": 100,
            "max_inflight_pairs": 4096}
POLICY = WindowPolicy(512, 0.020, 100, 100)
FIXED_S = 0.010
PER_PAIR_S = {1: 0.004, 2: 0.0022}  # a 2-thread replica: 1.8× one thread
OVERHEAD_MS = 8.0


def truth(threads: int) -> ServiceModel:
    return ServiceModel(FIXED_S, PER_PAIR_S[threads], overhead_s=np.full(10, OVERHEAD_MS / 1000))


def synthetic_report(configs=((1, 1), (1, 2), (2, 1)), docs="4-15", rates=(0.5, 0.8), seed=0) -> dict:
    """A scaleout report whose 'measured' figures come from the true model itself."""
    rng = np.random.default_rng(seed)
    mix = parse_distribution(docs)
    runs = []
    for replicas, threads in configs:
        service = truth(threads)
        pairs = rng.integers(1, 513, 300)
        windows = np.column_stack([pairs, np.zeros(300), (FIXED_S + PER_PAIR_S[threads] * pairs)
                                   * rng.lognormal(0, 0.05, 300)]).tolist()
        rps, docs_per_s = saturated_rate(service, POLICY, mix, rng)
        common = {"config": f"{replicas}×{threads}", "replicas": replicas, "threads": threads, "docs": docs,
                  "partitions": 6, "windows": windows, "overhead_ms": [OVERHEAD_MS] * 50, "lost": 0, "sent": 100}
        runs.append({**common, "kind": "closed", "concurrency": 100, "requests_per_s": replicas * rps,
                     "docs_per_s": replicas * docs_per_s, "p50": 2.0, "p99": 3.0,
                     "cpu": {"broker_cores": 0.2, "loadgen_cores": 0.05, "workers_cores": replicas * threads}})
        for fraction in rates:
            rate = fraction * replicas * rps
            p = predict(rate, mix, service, POLICY, replicas, 6, rng, "regular")
            runs.append({**common, "kind": "open", "rate": rate, "basis": "own", "fraction": fraction,
                         "of_own_capacity": fraction, "requests_per_s": rate, "docs_per_s": 0, "p50": p.p50_s,
                         "p99": p.p99_s, "cpu": {"broker_cores": 0.1, "loadgen_cores": 0.02}})
    return {"kind": "scaleout", "version": 1, "machine": "synthetic, 2 cores", "engine": "synthetic",
            "settings": SETTINGS, "runs": runs}


def test_document_counts_are_read_as_the_load_generator_reads_them():
    assert parse_distribution("20") == [(1.0, 20, 20)]
    assert parse_distribution("mix") == DISTRIBUTIONS["mix"]
    assert parse_distribution("4-15:3,300-1000:1") == [(3.0, 4, 15), (1.0, 300, 1000)]
    for bad in ("", "0", "15-4", "a-b", "4-15:x"):
        with pytest.raises(ValueError):
            parse_distribution(bad)


def test_profiles_recover_the_service_time_of_the_one_replica_runs():
    found = profiles(synthetic_report())
    assert sorted(found) == [1, 2]
    for threads, profile in found.items():
        assert profile.source.startswith(f"1×{threads}")
        assert not profile.contended
        assert profile.service.per_pair_s == pytest.approx(PER_PAIR_S[threads], rel=0.05)
        assert profile.service.overhead_s == pytest.approx(OVERHEAD_MS / 1000)
        assert profile.policy == POLICY


def test_a_thread_count_measured_only_with_several_replicas_is_marked_contended():
    found = profiles(synthetic_report(configs=((2, 1),)))
    assert found[1].contended and found[1].source.startswith("2×1")


@pytest.mark.parametrize("replicas,expected", [(1, 12), (2, 12), (3, 12), (4, 12), (5, 20), (6, 24), (7, 28),
                                               (10, 30), (100, 300)])
def test_partition_rule(replicas, expected):
    partitions = partitions_for(replicas)
    assert partitions == expected
    assert partitions % replicas == 0 and partitions >= max(2 * replicas, 6) and partitions <= 2 * max(2 * replicas, 6)


def test_a_prime_replica_count_is_rounded_up_a_little_for_better_partitions():
    assert rounded_replicas(239, 2.0, 6) == 240  # 720 partitions (30 divisors), not 956 (6)
    assert len(divisors(partitions_for(240))) > len(divisors(partitions_for(239)))
    assert rounded_replicas(7, 2.0, 6) == 7  # 5% of 7 is not a replica
    assert rounded_replicas(100, 2.0, 6) in range(100, 106)


def test_partition_rule_prefers_many_divisors_and_respects_growth():
    assert partitions_for(1, growth=2, minimum=1) == 4  # 2, 3, 4: 4 has three divisors
    assert partitions_for(10, growth=3, minimum=1) == 60  # 30..60 in steps of 10: 60 has 12
    assert len(divisors(60)) == 12


def test_plan_takes_the_fewest_cores_that_meet_the_bound():
    report = synthetic_report()
    result = plan(report, rate=100, docs="4-15", p99_bound=5.0, max_load=0.8, requests=10_000)
    options = {o["threads"]: o for o in result["options"]}
    for threads, option in options.items():
        capacity, _ = saturated_rate(truth(threads), POLICY, parse_distribution("4-15"), np.random.default_rng(1))
        assert option["capacity_rps"] == pytest.approx(capacity, rel=0.05)
        assert option["replicas"] >= option["fewest_replicas"] >= math.ceil(100 / (capacity * 0.8))
        assert option["load_over_capacity"] <= 0.8 and option["p99_s"] <= 5.0
        assert option["cores"] == option["replicas"] * threads
    rec = result["recommendation"]
    best = min(options.values(), key=lambda o: (o["cores"], o["p99_s"]))
    assert (rec["replicas"], rec["threads"]) == (best["replicas"], best["threads"])
    assert rec["partitions"] == partitions_for(rec["replicas"])
    assert rec["even_splits"][0] == rec["replicas"] and rec["partitions"] in rec["even_splits"]
    assert result["broker_cores_at_target"] == pytest.approx(
        np.median([0.2 / r["requests_per_s"] for r in report["runs"] if r["kind"] == "closed"]) * 100)
    text = plan_markdown(result)
    assert f"**Plan: {rec['replicas']} replicas × {rec['threads']} thread(s)**" in text
    assert f"{rec['partitions']} request partitions" in text


def test_a_tighter_bound_needs_more_replicas_and_an_impossible_one_none():
    report = synthetic_report(configs=((1, 1),))
    loose = plan(report, rate=40, docs="4-15", p99_bound=5.0, requests=10_000)["recommendation"]
    tight = plan(report, rate=40, docs="4-15", p99_bound=0.3, requests=10_000)["recommendation"]
    assert tight["replicas"] > loose["replicas"] and tight["p99_s"] <= 0.3
    # a lone request still waits window_ms and its own scoring: 20 ms + 10 ms + ~40 ms + 8 ms
    impossible = plan(report, rate=40, docs="4-15", p99_bound=0.05, requests=5_000)
    assert impossible["recommendation"] is None
    assert "p99 stays at" in impossible["options"][0]["why_not"]
    assert "No plan meets the target" in plan_markdown(impossible)


def test_extra_network_latency_moves_the_p99_by_as_much():
    report = synthetic_report(configs=((1, 1),))
    near = plan(report, rate=10, docs="10", p99_bound=5, requests=10_000, seed=4)["recommendation"]
    far = plan(report, rate=10, docs="10", p99_bound=5, requests=10_000, seed=4, extra_ms=50)["recommendation"]
    assert far["replicas"] == near["replicas"]
    assert far["p99_s"] - near["p99_s"] == pytest.approx(0.050, abs=0.005)


def test_plan_warns_when_it_extrapolates_beyond_what_was_measured():
    report = synthetic_report(configs=((1, 1),))
    notes = plan(report, rate=1, docs="300-1000", p99_bound=60, requests=5_000)["notes"]
    assert any("no prefiltered window was measured" in n for n in notes)


def test_validation_of_a_report_that_the_model_made_comes_out_close():
    result = validate(synthetic_report(), requests=10_000)
    rows = result["rows"]
    assert {r["config"] for r in rows} == {"1×1", "1×2", "2×1"}
    assert {r["kind"] for r in rows} == {"closed", "open"}
    for row in rows:
        assert row["own_ratio"] == pytest.approx(1.0, abs=0.2), row
        assert row["profile_ratio"] == pytest.approx(1.0, abs=0.2), row
    s = result["summary"]
    assert s["capacity_profile"]["runs"] == 3 and s["p99_own"]["runs"] == 6
    assert s["capacity_profile"]["median_error"] < 0.05
    text = validation_markdown(result)
    assert "| 2×1 | 4-15 | capacity (docs/s) |" in text and "median error" in text


def test_load_report_refuses_what_is_not_a_scaleout_report(tmp_path):
    with pytest.raises(PlanError, match="cannot read"):
        load_report(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(PlanError, match="not JSON"):
        load_report(str(bad))
    other = tmp_path / "loadtest.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(PlanError, match="not a report of python -m loadgen.bench.scaleout"):
        load_report(str(other))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadgen.plan", *args], capture_output=True, text=True, timeout=300)


def test_cli_plan_and_validate(tmp_path):
    report = tmp_path / "scaleout.json"
    report.write_text(json.dumps(synthetic_report()))
    out = tmp_path / "plan.json"
    proc = run_cli("--capacity", str(report), "--rate", "60", "--docs", "4-15:3,50-100:1", "--p99", "4",
                   "--requests", "5000", "--json", str(out), "--markdown", str(tmp_path / "plan.md"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    rec = result["recommendation"]
    assert rec["replicas"] >= 1 and rec["partitions"] % rec["replicas"] == 0
    assert f"Plan: {rec['replicas']} replicas" in proc.stdout
    assert (tmp_path / "plan.md").read_text().startswith("Target: 60 requests/s")

    proc = run_cli("--validate", str(report), "--requests", "5000", "--json", str(tmp_path / "v.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "predicted (profile)" in proc.stdout
    assert len(json.loads((tmp_path / "v.json").read_text())["rows"]) == 9

    proc = run_cli("--capacity", str(report), "--rate", "60", "--docs", "4-15", "--p99", "0.01", "--requests", "2000")
    assert proc.returncode == 2 and "No plan meets the target" in proc.stdout


def test_cli_says_what_is_missing_or_wrong(tmp_path):
    proc = run_cli("--rate", "5")
    assert proc.returncode == 2 and "a plan needs --capacity, --docs, --p99" in proc.stderr
    report = tmp_path / "scaleout.json"
    report.write_text(json.dumps(synthetic_report(configs=((1, 1),))))
    proc = run_cli("--capacity", str(report), "--rate", "5", "--docs", "15-4", "--p99", "1")
    assert proc.returncode == 2 and "bad document-count distribution" in proc.stderr
    proc = run_cli("--capacity", str(report), "--rate", "5", "--docs", "10", "--p99", "1", "--threads", "4")
    assert proc.returncode == 1 and "no measured replica of [4] threads" in proc.stderr


def test_the_planner_imports_neither_the_engines_nor_the_worker():
    code = ("import sys, loadgen.plan, loadgen.bench.plan; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'engines', 'streams', 'schemas', 'faust'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
