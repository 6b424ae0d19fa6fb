"""README.md runs as written: its Python client block gets its answer from a real worker on a
real broker (and so does its kcat pair, where kcat is installed), and its configuration table
names every setting the worker reads."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from engines.testmodel import ensure_test_model

from streams.settings import setting_variables
from tests.streams.conftest_workers import running_worker, unique_topics

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
PARTITIONS = 2


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    following = README.find("\n## ", start + 1)
    return README[start:following if following != -1 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def for_this_cluster(code: str, bootstrap: str, topics: dict[str, str]) -> str:
    """The block with only the bootstrap address and the topic names replaced."""
    code = code.replace("127.0.0.1:9092", bootstrap)
    code = code.replace("rerank-requests", topics["RERANK_REQUEST_TOPIC"])
    return code.replace("rerank-responses", topics["RERANK_RESPONSE_TOPIC"])


@pytest.fixture(scope="module")
def topics() -> dict[str, str]:
    return unique_topics()


@pytest.fixture(scope="module")
def worker(kafka_bootstrap, topics, tmp_path_factory):
    env = {**topics, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "RERANK_MODEL": str(ensure_test_model()),
           "RERANK_ENGINE": "onnx", "RERANK_PRECISION": "fp32", "RERANK_REQUEST_PARTITIONS": str(PARTITIONS),
           "RERANK_RESPONSE_PARTITIONS": str(PARTITIONS)}
    with running_worker(env, tmp_path_factory.mktemp("readme") / "worker.log") as proc:
        yield proc


@pytest.mark.kafka
def test_the_python_client_block_prints_its_answer(kafka_bootstrap, topics, worker) -> None:
    blocks = code_blocks(section("Using it from a client"), "python")
    assert blocks, "no ```python block in README's 'Using it from a client'"
    for written in ("127.0.0.1:9092", "rerank-requests", "rerank-responses"):
        assert written in blocks[0], f"the README block no longer mentions {written!r}: update this test"
    code = for_this_cluster(blocks[0], kafka_bootstrap, topics)
    for attempt in range(3):  # the same block again: each run must see its own answer, not an old one
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                              timeout=90)
        assert done.returncode == 0, f"run {attempt}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        answer = ast.literal_eval(done.stdout.strip())  # the block prints the answer as a dict
        assert answer["status"] == "ok", answer
        assert len(answer["results"]) == 1  # top_n: 1
        assert answer["results"][0]["document"]["text"] in (
            "Each partition is read by one member of the group.", "Cats sleep a lot.")
        print(f"run {attempt}: answered in {time.monotonic() - started:.1f} s")


@pytest.mark.kafka
@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (apt-get install kcat)")
def test_the_kcat_pair_gets_its_answer(kafka_bootstrap, topics, worker, tmp_path) -> None:
    follow, send = (for_this_cluster(block, kafka_bootstrap, topics)
                    for block in code_blocks(section("Using it from a client"), "bash")[:2])
    assert follow.lstrip().startswith("kcat -G") and "kcat -P" in send, (follow, send)
    request_id = f"r-{uuid.uuid4().hex[:8]}"
    send = send.replace("r1", request_id)
    # As a person would: start following, wait for every partition's "Reached end", then send.
    group = f"my-cli-{uuid.uuid4().hex[:8]}"
    follow = follow.replace("my-cli", group).strip() + " -c 1"
    errors = tmp_path / "kcat.err"
    with open(errors, "w") as err:
        follower = subprocess.Popen(["bash", "-c", follow], stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            deadline = time.monotonic() + 60
            while errors.read_text().count("Reached end of topic") < PARTITIONS:
                assert time.monotonic() < deadline, errors.read_text()
                assert follower.poll() is None, errors.read_text()
                time.sleep(0.2)
            subprocess.run(["bash", "-c", send], check=True, timeout=60)
            out, _ = follower.communicate(timeout=60)
        finally:
            if follower.poll() is None:
                follower.kill()
    key, _, value = out.strip().partition(" ")
    assert key == request_id, out
    assert '"status":"ok"' in value


def test_the_configuration_table_names_every_setting() -> None:
    table = section("Configuration")
    named = set(re.findall(r"`((?:RERANK|KAFKA)_[A-Z0-9_]+)`", table))
    settings = setting_variables()
    assert not settings - named, f"settings missing from README's configuration table: {sorted(settings - named)}"
    assert not named - settings, f"README's table names settings that do not exist: {sorted(named - settings)}"
