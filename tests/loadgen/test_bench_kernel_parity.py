"""loadgen.bench.kernel_parity: times our int8 model per micro-batch shape and precision, and reports it."""

from __future__ import annotations

import loadgen.bench.kernel_parity as kernel_parity


def test_it_times_our_model_at_each_shape_and_precision(monkeypatch, tmp_path):
    monkeypatch.setattr(kernel_parity, "SHAPES", [(2, 16), (1, 24)])
    monkeypatch.setattr(kernel_parity, "peer_model_in_cache", lambda: None)
    report = kernel_parity.run(peer_model=None)
    assert list(report["models"]) == ["ours"] and report["shapes"] == ["2x16", "1x24"]
    assert set(report["ms"]) == {f"ours {precision}" for precision in kernel_parity.precisions()}
    assert all(0 < ms < 10_000 for times in report["ms"].values() for ms in times.values())
    lines = kernel_parity.markdown(report).splitlines()
    assert lines[0].startswith("| micro-batch") and lines[2].startswith("| 2x16 |") and "µs/token" in lines[2]
