"""The GPU benchmark's every code path, at tiny sizes on the CPU (no GPU in CI)."""
from __future__ import annotations

import json
import subprocess
import sys


def test_gpu_bench_cpu_smoke_runs_every_path_and_writes_json(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "loadgen.bench.gpu", "--cpu-smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                            "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["cpu_smoke"] is True
    assert {"torch-fp32", "torch-bf16", "ort-cpu-fp32"} <= set(report["pairs_per_s"])
    assert all(v > 0 for per in report["pairs_per_s"].values() for v in per.values())
    agreement = report["agreement"]["bf16"]
    assert agreement["spearman_mean"] > 0.5, agreement  # bf16 keeps the ranking of fp32
    assert report["request_100_docs"]["p99_ms"] >= report["request_100_docs"]["p50_ms"] > 0
    assert "ort-cuda-fp16" in report["skipped"]
