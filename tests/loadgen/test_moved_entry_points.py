"""The commands that moved in 0.2 still run from their old names (until 0.3), and say where they went."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

MOVED = [
    (["loadgen.eval"], "evaluation", "Relevance (NDCG@10"),
    (["loadgen.eval_data"], "evaluation.dataset", "OUT_DIR"),
    (["engines.testmodel", "--trained"], "evaluation.training", "train (or reuse)"),
    (["loadgen.engines"], "loadgen.bench.engine_speed", "--engines"),
    (["loadgen.gpu_bench"], "loadgen.bench.gpu", "--cpu-smoke"),
    (["loadgen.loadtest"], "loadgen.bench.loadtest", "--p99-bound"),
    (["loadgen.soak"], "loadgen.bench.soak", "--minutes"),
]


def python_m(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("old, new, in_help", MOVED, ids=[" ".join(old) for old, _, _ in MOVED])
def test_an_old_command_runs_the_new_one_and_says_so(old, new, in_help):
    result = python_m(*old, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"`python -m {new}`" in result.stderr and "0.3" in result.stderr
    assert in_help in result.stdout  # the new command's own help: it is what ran
    assert result.stdout == python_m(new, "--help").stdout
