"""loadgen.cluster.faults.failover: the longest stretch without answers and the latency of each
phase, from what the client recorded (a snapshot built by hand here; the fault tests and
``python -m loadgen.bench.failover`` use it on real runs)."""
from __future__ import annotations

import pytest

from loadgen.client import Answer, SentRequest
from loadgen.cluster.faults import failover


class Recorded:
    """What RerankClient.snapshot() returns, for requests sent at ``sent`` and answered at ``answered``."""

    def __init__(self, requests: dict[str, tuple[float, list[float]]]) -> None:
        self.requests = {rid: SentRequest(sent_at=sent, documents=1,
                                          answers=[Answer(rid, {}, at - sent, at, "resp") for at in answered])
                         for rid, (sent, answered) in requests.items()}

    def snapshot(self) -> dict[str, SentRequest]:
        return self.requests


def test_the_gap_is_the_longest_stretch_between_answers_and_phases_go_by_send_time():
    client = Recorded({"a": (0.0, [0.1]), "b": (1.0, [1.2]),  # before the fault at 2.0
                       "c": (2.5, [9.5]), "d": (3.0, [9.6, 9.7]),  # during it (recovered at 5.0)
                       "e": (10.0, [10.3]), "lost": (10.5, [])})  # after it
    figures = failover(client, list(client.requests), fault_at=2.0, recovered_at=5.0)
    assert figures.longest_gap_s == pytest.approx(9.5 - 1.2)
    assert figures.gap_began_s == pytest.approx(1.2 - 2.0)
    assert figures.latency["before"]["n"] == 2 and figures.latency["before"]["p99"] == pytest.approx(0.2)
    assert figures.latency["during"]["p99"] == pytest.approx(7.0)  # the first answer counts
    assert figures.latency["after"] == {"n": 1, "p50": pytest.approx(0.3), "p99": pytest.approx(0.3)}
    assert "longest gap without answers 8.3 s" in figures.line()
