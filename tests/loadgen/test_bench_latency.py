"""The latency breakdown, and a few seconds of the real latency bench against the broker."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadgen.bench.latency import breakdown
from loadgen.client import Answer, SentRequest


class Answers:
    """What breakdown() reads of a RerankClient: its snapshot of requests and answers."""

    def __init__(self, pending: dict[str, SentRequest]) -> None:
        self.pending = pending

    def snapshot(self) -> dict[str, SentRequest]:
        return self.pending


def ok(request_id: str, latency_s: float, queue_ms: float, inference_ms: float) -> Answer:
    meta = {"queue_ms": queue_ms, "inference_ms": inference_ms, "total_ms": queue_ms + inference_ms + 1}
    return Answer(request_id, {"status": "ok", "meta": meta}, latency_s, 0.0, "resp")


def test_breakdown_splits_end_to_end_into_the_worker_and_the_rest():
    pending = {f"r{i}": SentRequest(0.0, 10, [ok(f"r{i}", 0.050 + i / 1000, 2.0, 20.0 + i)]) for i in range(100)}
    pending["lost"] = SentRequest(0.0, 10, [])
    pending["err"] = SentRequest(0.0, 10, [Answer("err", {"status": "error", "error": {"code": "internal"}},
                                               0.01, 0.0, "resp")])
    result = breakdown(Answers(pending), list(pending))
    assert (result["sent"], result["answered"], result["lost"], result["errors"]) == (102, 101, 1, 1)
    assert result["end_to_end_ms"]["n"] == 100
    assert result["end_to_end_ms"]["p50"] == pytest.approx(99.5)
    assert result["inference_ms"]["p50"] == pytest.approx(69.5)
    # end to end (50 + i ms) minus the worker's total (23 + i ms)
    assert result["outside_worker_ms"]["p50"] == pytest.approx(27.0)
    assert result["end_to_end_ms"]["p50"] <= result["end_to_end_ms"]["p99"] <= result["end_to_end_ms"]["max"]


@pytest.mark.kafka
@pytest.mark.timeout(400)
@pytest.mark.parametrize("background", [["--capacity-s", "3", "--capacity-concurrency", "2"],
                                        ["--background-rate", "1.5", "--cycles", "2"]],
                         ids=["share-of-capacity", "given-rate-two-cycles"])
def test_a_tiny_latency_run_against_the_broker_writes_its_report(kafka_bootstrap, tmp_path, background):
    out_json = tmp_path / "latency.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen.bench.latency", "--bootstrap", kafka_bootstrap, "--lone", "2", *background,
         "--duration", "3", "--small-rate", "1", "--background-docs", "10-20", "--engine", "onnx",
         "--precision", "fp32", "--json", str(out_json), "--log", str(tmp_path / "w.log")],
        capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out_json.read_text())
    assert report["lone"]["answered"] == 2 and report["lone"]["end_to_end_over_inference_p50"] > 0
    cycles = 2 if "--cycles" in background else 1
    assert len(report["cycles"]) == cycles
    if "--background-rate" in background:  # no capacity run: the rate given
        assert "capacity" not in report and report["background_rate"] == 1.5
    else:
        assert report["capacity"]["requests_per_s"] > 0
        assert report["background_rate"] == 0.5 * report["capacity"]["requests_per_s"]
    for run in ("small_alone", "background_alone", "small_with_background", "background"):
        assert report[run]["lost"] == 0 and report[run]["end_to_end_ms"]["p99"] is not None, run
    # Pooled over the cycles: each cycle sends at least one request of each stream in each run.
    assert report["small_alone"]["sent"] >= cycles and report["background"]["sent"] >= cycles
    assert report["small_with_background"]["sent"] == report["small_alone"]["sent"]  # same arrivals
    assert all(c["ratios"]["small_p99_together_over_alone"] > 0 for c in report["cycles"])
    assert report["worker_exit"] == 0
    assert report["background"]["docs_per_s"] > 0 and report["background_alone"]["docs_per_s"] > 0
    assert report["ratios"]["small_p99_together_over_alone"] > 0
    assert "small requests p99: alone" in proc.stdout and "p99 together ÷ alone" in proc.stdout
    assert ("per cycle" in proc.stdout) == (cycles > 1)
