"""The soak report (binning, drift, RSS growth) and a few seconds of the real soak."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadgen.bench.soak import soak_report


def test_report_bins_answers_and_works_out_drift_and_rss_growth():
    # 3 minutes: 2 answers/s, then 2, then 1 (a worker slowing down); RSS flat in the
    # first (warm-up) minute, then +10 MiB per minute
    timeline = [(i / 2, 0.1) for i in range(240)] + [(120 + i, 0.3) for i in range(60)]
    rss = [(s, 500.0 if s < 60 else 500.0 + (s - 60) / 6) for s in range(0, 180, 5)]
    report = soak_report(timeline, rss, duration_s=180, interval_s=60, sent=300, lost=0)
    assert [iv.answered for iv in report.intervals] == [120, 120, 60]
    assert [iv.requests_per_s for iv in report.intervals] == [2.0, 2.0, 1.0]
    assert report.throughput_drift == pytest.approx(0.5)
    assert report.intervals[0].p50_ms == pytest.approx(100) and report.intervals[2].p99_ms == pytest.approx(300)
    assert report.rss_start_mib == pytest.approx(500.0)
    assert report.rss_growth_mib == pytest.approx(115 / 6)
    assert report.rss_slope_mib_per_min == pytest.approx(10.0)
    json.dumps(report.to_json())


def test_report_of_a_steady_run_has_no_drift_and_no_growth():
    timeline = [(i / 4, 0.05) for i in range(4 * 120)]
    rss = [(float(s), 800.0) for s in range(0, 120, 5)]
    report = soak_report(timeline, rss, duration_s=120, interval_s=30)
    assert len(report.intervals) == 4
    assert report.throughput_drift == pytest.approx(1.0)
    assert report.rss_growth_mib == 0 and report.rss_slope_mib_per_min == pytest.approx(0.0, abs=1e-9)


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_a_short_soak_against_the_broker_writes_its_report(kafka_bootstrap, tmp_path):
    out_json, out_png = tmp_path / "soak.json", tmp_path / "soak.png"
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen.bench.soak", "--bootstrap", kafka_bootstrap, "--minutes", "0.25",
         "--interval-s", "5", "--concurrency", "2", "--docs", "2-4", "--engine", "onnx", "--precision", "fp32",
         "--json", str(out_json), "--plot", str(out_png), "--log", str(tmp_path / "w.log"), "--quiet"],
        capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out_json.read_text())
    assert report["lost"] == 0 and report["answered"] > 0
    assert len(report["intervals"]) == 3
    assert report["throughput_drift"] is not None and report["rss_growth_mib"] is not None
    assert len(report["rss_samples"]) >= 5
    assert "throughput drift" in proc.stdout
    assert out_png.read_bytes()[:4] == b"\x89PNG"
