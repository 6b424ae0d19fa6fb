"""The load generator's own behaviour: distributions, and clear messages for a bad cluster."""
from __future__ import annotations

import subprocess
import sys

import pytest

from loadgen.run import RequestFactory, parse_distribution


def test_named_and_custom_distributions():
    assert parse_distribution("50-100") == [(1.0, 50, 100)]
    assert parse_distribution("4-15:3,300-1000:1") == [(3.0, 4, 15), (1.0, 300, 1000)]
    with pytest.raises(ValueError, match="bad document-count distribution"):
        parse_distribution("lots")


def test_requests_follow_the_distribution_and_use_real_passages():
    factory = RequestFactory(parse_distribution("4-15:1,300-1000:1"), seed=3)
    sizes = [len(factory()["documents"]) for _ in range(200)]
    assert all(4 <= s <= 15 or 300 <= s <= 1000 for s in sizes)
    assert any(s <= 15 for s in sizes) and any(s >= 300 for s in sizes)
    req = factory()
    assert len(set(req["documents"])) == len(req["documents"])
    assert all(40 <= len(d.split()) <= 80 for d in req["documents"])


def test_long_documents_for_sizing_chunked_requests():
    factory = RequestFactory(parse_distribution("10"), seed=4, document_words=2000)
    req = factory(max_chunks_per_doc=4)
    assert len(req["documents"]) == 10 and all(len(d.split()) == 2000 for d in req["documents"])
    assert len(set(req["documents"])) == 10 and req["max_chunks_per_doc"] == 4


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadgen", *args], capture_output=True, text=True, timeout=120)


def test_bad_broker_address_is_a_message_not_a_traceback():
    proc = run_cli("--bootstrap", "127.0.0.1:1", "--rate", "1", "--requests", "1")
    assert proc.returncode == 2
    assert "cannot reach Kafka at 127.0.0.1:1" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.kafka
def test_unknown_topic_is_a_message_not_a_traceback(kafka_bootstrap):
    proc = run_cli("--bootstrap", kafka_bootstrap, "--request-topic", "no-such-topic-here", "--rate", "1",
                   "--requests", "1")
    assert proc.returncode == 2
    assert "topic 'no-such-topic-here' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_open_and_closed_loop_are_exclusive():
    proc = run_cli("--rate", "1", "--concurrency", "2", "--requests", "1")
    assert proc.returncode == 2 and "exactly one of --rate" in proc.stderr
