"""The compose files merge as intended: the GPU override keeps the CPU file's services but not
its CPU limit; and what the CPU file asks of a host holds: named volumes only, healthchecks only
where they belong and cheap, Kafka's data on a volume, the prepare step before the workers.
Checked with compose-go (tests/compose/main.go), the loader `docker compose config` itself runs,
since no Docker engine or compose plugin is needed for that; skipped where Go is not installed
(its modules come from the Go module proxy on first use). `make compose-test` runs the file."""
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
    assert {"kafka", "topic-init", "prepare", "worker", "loadgen"} <= set(project["services"])
    # the prepare step runs in the CUDA image (it has torch) with the workers' settings, on a GPU
    prepare = project["services"]["prepare"]
    assert prepare["image"] == "kafka-rerank:cuda" and "target" not in prepare["build"]
    assert prepare["build"]["dockerfile"] == "deploy/docker/Dockerfile.cuda"
    assert prepare["environment"] == worker["environment"]
    assert prepare["deploy"]["resources"]["reservations"] == resources["reservations"]
    assert project["services"]["topic-init"]["image"] == "kafka-rerank:cuda"


def test_the_load_generator_runs_in_an_image_of_its_own(compose_config) -> None:
    # the client alone (deploy/docker/Dockerfile.loadgen): the worker images hold no tool
    for files in (["docker-compose.yaml"], ["docker-compose.yaml", "docker-compose.gpu.yaml"]):
        loadgen = compose_config(*files)["services"]["loadgen"]
        assert loadgen["image"] == "kafka-rerank:loadgen", files
        assert loadgen["build"]["dockerfile"] == "deploy/docker/Dockerfile.loadgen", files
        assert loadgen["command"][:3] == ["python", "-m", "loadgen"]


def test_the_workers_serve_what_the_prepare_step_made(compose_config) -> None:
    services = compose_config("docker-compose.yaml")["services"]
    prepare, worker = services["prepare"], services["worker"]
    # the torch-free worker image and the prepare image: two targets of one Dockerfile, worker the default
    assert worker["build"]["dockerfile"] == prepare["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert "target" not in worker["build"] and prepare["build"]["target"] == "prepare"
    assert (worker["image"], prepare["image"]) == ("kafka-rerank:cpu", "kafka-rerank-prepare:cpu")
    assert prepare["command"] == ["python", "-m", "streams", "prepare"] and prepare.get("restart") == "no"
    assert worker["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    # the same settings and the same cache: the prepare step makes exactly what the workers look for
    assert prepare["environment"] == worker["environment"]
    assert [(v["source"], v["target"]) for v in prepare["volumes"]] == [(v["source"], v["target"]) for v in worker["volumes"]]


def test_only_named_volumes(compose_config) -> None:
    project = compose_config("docker-compose.yaml")
    declared = set(project["volumes"])
    for name, service in project["services"].items():
        for volume in service.get("volumes", []):
            assert volume["type"] == "volume" and volume.get("source") in declared, (name, volume)
    # Kafka keeps its data on one; the image's other VOLUMEs get a tmpfs, not an anonymous volume
    kafka = project["services"]["kafka"]
    [data] = kafka["volumes"]
    assert data["source"] == "kafka-data" and data["target"] == kafka["environment"]["KAFKA_LOG_DIRS"]
    assert set(kafka["tmpfs"]) == {"/etc/kafka/secrets", "/mnt/shared/config"}
    assert kafka["environment"]["CLUSTER_ID"], "a fixed cluster id, so that the formatted volume is reused"


def test_healthchecks_only_where_they_belong_and_cheap(compose_config) -> None:
    services = compose_config("docker-compose.yaml")["services"]
    assert {name for name, s in services.items() if "healthcheck" in s} == {"kafka", "worker"}
    kafka = " ".join(services["kafka"]["healthcheck"]["test"])
    assert "java" not in kafka and "kafka-" not in kafka, "a Kafka tool starts a JVM at every check"
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "python", "-m", "streams", "health"]
    for name in ("kafka", "worker"):
        test = services[name]["healthcheck"]["test"]
        # podman 4.3's Docker API splits a CMD argument at its spaces (`bash -c "exec ..."` became
        # `bash -c exec ...`, always healthy): a spaced command goes in one CMD-SHELL string
        assert test[0] == "CMD-SHELL" or not any(" " in arg for arg in test[1:]), (name, test)


def test_images_are_pinned(compose_config) -> None:
    kafka = compose_config("docker-compose.yaml")["services"]["kafka"]["image"]
    assert kafka.startswith("apache/kafka:4.1.2@sha256:") and len(kafka.rsplit(":", 1)[1]) == 64
