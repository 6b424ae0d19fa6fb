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


def test_the_peers_padding_is_counted_as_its_batched_predict_cuts_a_round():
    class Tokens:  # a token per character: lengths are easy to follow
        def encode_batch(self, pairs):
            return [type("Encoding", (), {"ids": list(q + d)})() for q, d in pairs]

    # 33 pairs: the 32 longest (sorted by characters) in one batch, the shortest alone.
    round_ = [("q", ["x" * 9] + ["x" * 4] * 31 + ["x"])]
    padding = kernel_parity.peer_padding(Tokens(), 512, [round_])
    real, padded = 10 + 31 * 5 + 2, 10 * 32 + 2
    assert abs(padding - (1 - real / padded)) < 1e-12
    assert kernel_parity.peer_padding(Tokens(), 6, [round_]) == 1 - (6 + 31 * 5 + 2) / (6 * 32 + 2)  # truncated
