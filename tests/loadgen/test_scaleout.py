"""python -m loadgen.bench.scaleout: its bookkeeping on made-up runs, and a tiny run of
1 and 2 replicas against the real broker (whose report the planner then reads)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadgen.bench.scaleout import (CpuMeter, broker_process, comparisons, concurrency_for, cpu_summary,
                                    mark_shared_reference, markdown, run_length)
from streams.settings import WorkerSettings


def test_closed_loop_keeps_enough_pairs_in_flight_per_replica():
    settings = WorkerSettings(prefilter_threshold=100, prefilter_keep=100)
    assert concurrency_for("10", 1, settings) == 103  # ceil(1024 / 10)
    assert concurrency_for("4-15", 2, settings) == 2 * 108  # mean 9.5 documents
    # prefiltered requests cost `keep` pairs, not their documents
    assert concurrency_for("300-1000", 1, settings) == 11
    assert concurrency_for("2000", 3, settings) == 3 * 11
    assert concurrency_for("600", 1, WorkerSettings(prefilter_threshold=5000)) == 4
    assert concurrency_for("10", 1, settings, in_flight_pairs=64) == 7


def test_runs_last_long_enough_for_enough_answers_within_bounds():
    args = {"min_answers": 100, "run_seconds": 20.0, "max_run_seconds": 60.0}
    assert run_length(50.0, args) == 20.0  # 100 answers in 2 s: the shortest run
    assert run_length(2.5, args) == 40.0
    assert run_length(0.2, args) == 60.0  # large requests: capped
    assert run_length(None, args) == 60.0  # nothing to go by
    assert run_length(0.2, {**args, "max_run_seconds": 5.0}) == 20.0  # the cap never cuts below the shortest


def test_cpu_meter_reports_cores_and_what_else_ran():
    before = {"t": 10.0, "broker": 5.0, "loadgen": 1.0, "workers": [2.0, 3.0], "machine": 100.0}
    after = {"t": 20.0, "broker": 6.0, "loadgen": 1.5, "workers": [10.0, 12.0], "machine": 122.0}
    cores = CpuMeter.cores(before, after)
    assert cores["broker_cores"] == pytest.approx(0.1) and cores["loadgen_cores"] == pytest.approx(0.05)
    assert cores["worker_cores"] == pytest.approx([0.8, 0.9]) and cores["workers_cores"] == pytest.approx(1.7)
    assert cores["machine_busy_cores"] == pytest.approx(2.2)
    assert cores["other_cores"] == pytest.approx(2.2 - 1.7 - 0.1 - 0.05)
    remote = CpuMeter.cores({**before, "broker": None}, {**after, "broker": None})
    assert remote["broker_cores"] is None and remote["other_cores"] == pytest.approx(2.2 - 1.75)


def made_up_run(config: str, kind: str, docs="4-15", **extra) -> dict:
    replicas, threads = (int(x) for x in config.split("×"))
    cpu = {"wall_s": 10, "machine_cores": 2, "broker_cores": 0.2, "loadgen_cores": 0.05, "worker_cores": [0.9],
           "workers_cores": 0.9 * replicas, "machine_busy_cores": 1.9, "other_cores": 0.0}
    return {"config": config, "replicas": replicas, "threads": threads, "docs": docs, "kind": kind, "partitions": 6,
            "sent": 100, "lost": 0, "requests_per_s": 10.0, "docs_per_s": 95.0 * replicas, "p50": 0.5, "p99": 1.0,
            "concurrency": 100, "cpu": cpu, **extra}


def test_comparison_pairs_one_replica_of_two_threads_with_two_of_one():
    runs = [made_up_run("1×1", "closed"),
            made_up_run("1×1", "open", rate=5.0, basis="own", fraction=0.5, of_own_capacity=0.5),
            made_up_run("1×2", "closed", docs_per_s=170.0),
            made_up_run("1×2", "open", rate=5.0, basis="reference", fraction=0.5, of_own_capacity=0.3, p99=0.7),
            made_up_run("1×2", "open", rate=8.5, basis="own", fraction=0.5, of_own_capacity=0.5, p99=0.9),
            made_up_run("2×1", "closed", docs_per_s=185.0),
            made_up_run("2×1", "open", rate=5.0, basis="reference", fraction=0.5, of_own_capacity=0.27, p99=0.6),
            made_up_run("2×1", "open", rate=9.2, basis="own", fraction=0.5, of_own_capacity=0.5, p99=0.8)]
    mark_shared_reference(runs)
    assert runs[1].get("shared_reference") and not runs[3].get("shared_reference")
    (comp,) = comparisons(runs)
    assert (comp["a"], comp["b"], comp["docs"]) == ("1×2", "2×1", "4-15")
    figures = {row["figure"]: row for row in comp["rows"]}
    assert (figures["saturated docs/s"]["a"], figures["saturated docs/s"]["b"]) == (170.0, 185.0)
    assert figures["p50 / p99 at 5.00 req/s"]["a"] == (0.5, 0.7) and figures["p50 / p99 at 5.00 req/s"]["b"][1] == 0.6
    assert figures["p50 / p99 at 50% of own capacity"]["rates"] == (8.5, 9.2)
    report = {"machine": "test, 2 cores", "engine": "onnx-int8", "model_note": "test", "partitions": 6,
              "run_seconds": 20, "max_run_seconds": 60, "min_answers": 100, "command": "python -m loadgen.bench.scaleout", "wall_s": 600, "cores": 2,
              "settings": {"window_max_pairs": 512, "window_ms": 20.0}, "runs": runs, "comparisons": [comp],
              "cpu_summary": cpu_summary(runs)}
    text = markdown(report)
    assert "| 4-15 | 2×1 | 185 | 1.95 |" in text  # × the first configuration
    assert "**1×2 against 2×1**" in text and "| p50 / p99 at 5.00 req/s | 0.50 / 0.70 | 0.50 / 0.60 |" in text
    assert "the broker used 0.20–0.20 (10%–10%) cores" in text


@pytest.mark.kafka
@pytest.mark.timeout(600)
def test_one_and_two_replicas_against_the_broker(kafka_bootstrap, tmp_path):
    assert broker_process(kafka_bootstrap) is not None  # the local broker's JVM, from its pid file
    out_json, out_md = tmp_path / "scaleout.json", tmp_path / "scaleout.md"
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen.bench.scaleout", "--quick", "--bootstrap", kafka_bootstrap,
         "--engine", "onnx", "--precision", "fp32", "--json", str(out_json), "--markdown", str(out_md),
         "--logs", str(tmp_path / "logs")], capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert [(c["label"], sorted(c["partitions_held"])) for c in report["configs"]] == [("1×1", [6]), ("2×1", [3, 3])]
    closed = {r["config"]: r for r in report["runs"] if r["kind"] == "closed"}
    assert set(closed) == {"1×1", "2×1"}
    for config, run in closed.items():
        assert run["lost"] == 0 and run["answered"] > 0
        # every replica answered: the load reached all of them
        assert len(run["answers_by_worker"]) == run["replicas"], run["answers_by_worker"]
        assert run["windows"] and all(pairs > 0 and seconds > 0 for pairs, _, seconds in run["windows"])
        cpu = run["cpu"]
        assert cpu["broker_cores"] > 0 and cpu["loadgen_cores"] > 0 and cpu["workers_cores"] > 0
        assert len(cpu["worker_cores"]) == run["replicas"]
    opened = [r for r in report["runs"] if r["kind"] == "open"]
    assert {r["config"] for r in opened if r["basis"] == "own"} == {"1×1", "2×1"}
    assert all(r["lost"] == 0 and r["overhead_ms"] for r in opened)
    text = out_md.read_text()
    assert "**Capacity**" in text and "| 2-4 | 2×1 |" in text and "Lost: 0 of" in text

    validation = subprocess.run([sys.executable, "-m", "loadgen.plan", "--validate", str(out_json), "--requests",
                                 "5000", "--json", str(tmp_path / "v.json")], capture_output=True, text=True,
                                timeout=300)
    assert validation.returncode == 0, validation.stdout + validation.stderr
    assert len(json.loads((tmp_path / "v.json").read_text())["rows"]) == len(report["runs"])
    planned = subprocess.run([sys.executable, "-m", "loadgen.plan", "--capacity", str(out_json), "--rate", "2",
                              "--docs", "3", "--p99", "30", "--requests", "5000"], capture_output=True, text=True,
                             timeout=300)
    assert planned.returncode == 0 and "**Plan:" in planned.stdout, planned.stdout + planned.stderr
