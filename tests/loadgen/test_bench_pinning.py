"""The pinning benchmark, end to end on a few requests (no figure is checked: the cores here are shared)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from loadgen.bench.pinning import _parse_engines, main


def test_engine_list_defaults_to_auto_precision():
    assert _parse_engines("openvino:int8, onnx") == [("openvino", "int8"), ("onnx", "auto")]


def test_a_short_run_reports_both_settings_for_throughput_and_lone_windows(tmp_path):
    out = tmp_path / "pinning.json"
    result = CliRunner().invoke(main, ["--engines", "onnx:int8", "--rounds", "1",
                                       "--requests", "4", "--lone-threads", "1", "--lone-requests", "3",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert sorted(row["cpu_pinning"] for row in report["throughput"].values()) == [False, True]
    assert all(row["best_pairs_per_s"] > 0 for row in report["throughput"].values())
    assert [(row["threads"], row["cpu_pinning"]) for row in report["lone_windows"]] == [(1, False), (1, True)]
    assert all(0 < row["p50_ms"] <= row["p90_ms"] for row in report["lone_windows"])
    assert "| onnx-int8 | 1 | on |" in result.output
