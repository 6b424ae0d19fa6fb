"""The replicas benchmark: its arithmetic, and a few seconds of the real thing (two spawned
processes with an engine each). No figure is checked: the cores here are shared."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from loadgen.bench.replicas import main, markdown, shortfalls, summarise


def _run(pairs_per_s: float, windows: int = 5) -> dict:
    return {"pairs": int(pairs_per_s * 10), "windows": windows, "elapsed_s": 10.0, "late_s": 0.0,
            "pairs_per_s": pairs_per_s, "cpu_utilisation": 0.97}


def test_best_rounds_and_scaling():
    summary = summarise([_run(230), _run(237), _run(200)],
                        [[_run(211), _run(224)], [_run(230), _run(200)], [_run(100), _run(120)]])
    assert summary["one"]["pairs_per_s"] == 237
    assert summary["together"]["pairs_per_s_sum"] == 435  # the best round by its sum, not the best of each
    assert summary["together"]["per_process_pairs_per_s"] == [211, 224]
    assert summary["scaling"] == pytest.approx(435 / 237)
    assert summary["together"]["rounds_pairs_per_s_sum"] == [435.0, 430.0, 220.0]


def test_a_run_without_a_finished_window_is_an_error_not_a_zero():
    with pytest.raises(RuntimeError, match="no window"):
        summarise([_run(237)], [[_run(211), _run(0, windows=0)]])


def test_shortfalls_name_the_unpinned_engines_below_the_target():
    report = {"workload": {"processes": 2}, "results": [
        {"engine": "openvino-int8", "cpu_pinning": False, "scaling": 1.84, **summarise([_run(237)], [[_run(211), _run(224)]])},
        {"engine": "openvino-int8", "cpu_pinning": True, **summarise([_run(237)], [[_run(117), _run(120)]])},
        {"engine": "torch-fp32", "cpu_pinning": False, **summarise([_run(45)], [[_run(30), _run(30)]])},
    ]}
    assert shortfalls(report, 1.6) == ["torch-fp32: 1.33x < 1.6x"]
    table = markdown(report)
    assert "| openvino-int8 | on | 237.0 | 117.0 + 120.0 | 237.0 | 1.00x (of 2) |" in table


@pytest.mark.timeout(600)
def test_two_processes_for_a_few_seconds(tmp_path):
    out = tmp_path / "replicas.json"
    done = CliRunner().invoke(main, ["--engines", "onnx:fp32", "--rounds", "1", "--seconds", "8", "--window-pairs",
                                     "16", "--json", str(out)])
    assert done.exit_code == 0, done.output
    report = json.loads(out.read_text())
    [row] = report["results"]
    assert row["engine"] == "onnx-fp32" and row["processes"] == 2 and row["threads_per_process"] == 1
    assert row["cpu_pinning"] is False
    assert row["one"]["pairs_per_s"] > 0 and len(row["together"]["per_process_pairs_per_s"]) == 2
    assert all(x > 0 for x in row["together"]["per_process_pairs_per_s"])
    assert row["scaling"] == pytest.approx(row["together"]["pairs_per_s_sum"] / row["one"]["pairs_per_s"])
