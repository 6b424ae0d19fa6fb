"""loadgen.bench.delivery's comparison: best throughput of the rounds, median latency, each
exactly_once ÷ at_least_once. (The bench itself runs real workers: `python -m loadgen.bench.delivery`.)"""
from __future__ import annotations

import pytest

from loadgen.bench.delivery import compare


def run(mode: str, requests_per_s: float, p50: float, p99: float) -> dict:
    return {"mode": mode, "requests_per_s": requests_per_s, "p50_ms": p50, "p99_ms": p99}


def test_compare_takes_the_best_throughput_and_the_median_latency_of_each_mode():
    runs = [run("at_least_once", 10, 100, 300), run("exactly_once", 8, 200, 500),
            run("at_least_once", 12, 120, 400), run("exactly_once", 9, 180, 700),
            run("at_least_once", 11, 110, 350), run("exactly_once", 7, 220, 600)]
    c = compare(runs)
    assert c["throughput_ratio"] == pytest.approx(9 / 12)
    assert c["p50_ratio"] == pytest.approx(200 / 110)
    assert c["p99_ratio"] == pytest.approx(600 / 350)
