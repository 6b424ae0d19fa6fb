"""The compose files merge as intended: the GPU override keeps the CPU file's services but not
its CPU limit. Checked with compose-go (tests/compose/main.go), the loader `docker compose
config` itself runs, since no Docker engine or compose plugin is needed for that; skipped
where Go is not installed (its modules come from the Go module proxy on first use)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE_GO = REPO / "tests" / "compose"

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed")


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory):
    binary = tmp_path_factory.mktemp("compose") / "compose-config"
    built = subprocess.run(["go", "build", "-mod=readonly", "-o", str(binary), "."], cwd=COMPOSE_GO,
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr

    def config(*files: str) -> dict:
        done = subprocess.run([str(binary), *files], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return config


def test_the_cpu_file_limits_each_worker_to_two_cores(compose_config) -> None:
    worker = compose_config("docker-compose.yaml")["services"]["worker"]
    assert worker["deploy"]["resources"]["limits"] == {"cpus": 2, "memory": str(4 * 2**30)}
    assert worker["image"] == "kafka-rerank:cpu"


def test_the_gpu_override_drops_the_cpu_limit_and_reserves_a_gpu(compose_config) -> None:
    project = compose_config("docker-compose.yaml", "docker-compose.gpu.yaml")
    worker = project["services"]["worker"]
    resources = worker["deploy"]["resources"]
    assert resources["limits"] == {"memory": str(16 * 2**30)}, resources  # no "cpus"
    assert resources["reservations"]["devices"] == [{"capabilities": ["gpu"], "driver": "nvidia", "count": 1}]
    assert worker["image"] == "kafka-rerank:cuda"
    assert worker["environment"]["RERANK_DEVICE"] == "cuda"
    # the rest of the CPU file is still there
    assert worker["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert worker["stop_grace_period"] and "healthcheck" in worker
    assert {"kafka", "topic-init", "worker", "loadgen"} <= set(project["services"])


def test_the_load_generator_runs_in_an_image_of_its_own(compose_config) -> None:
    # the client alone (deploy/docker/Dockerfile.loadgen): the worker images hold no tool
    for files in (["docker-compose.yaml"], ["docker-compose.yaml", "docker-compose.gpu.yaml"]):
        loadgen = compose_config(*files)["services"]["loadgen"]
        assert loadgen["image"] == "kafka-rerank:loadgen", files
        assert loadgen["build"]["dockerfile"] == "deploy/docker/Dockerfile.loadgen", files
        assert loadgen["command"][:3] == ["python", "-m", "loadgen"]
