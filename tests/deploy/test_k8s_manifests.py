"""deploy/k8s checked offline: every manifest against the Kubernetes JSON schemas (strict: an
unknown field is an error) that the kubernetes-validate package ships, KEDA's objects against
KEDA's own CRD schemas (vendored under tests/deploy/keda/, v2.20.2), and the rules between them
that no schema knows: the grace period above the worker's shutdown grace, threads equal to the
CPU limit, at most one replica per request partition, the scaler watching the group and topic
the workers use, and every setting a setting the worker knows."""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streams.settings import WorkerSettings, load_settings, setting_variables

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KEDA_CRDS = Path(__file__).parent / "keda"
# The oldest Kubernetes still in wide use and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KEDA_GROUP = "keda.sh/v1alpha1"
#: Assumed when neither the manifests nor the settings name one (the worker's default, ~20 s).
DEFAULT_SHUTDOWN_GRACE_S = 20.0
#: After the grace, the worker still flushes its producer and commits offsets.
GRACE_MARGIN_S = 10
#: The kafka scaler's trigger metadata names in KEDA v2.20.2 (pkg/scalers/kafka_scaler.go, fields
#: read from triggerMetadata); a misspelt name would be ignored by KEDA, not refused.
KAFKA_SCALER_METADATA = {
    "bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv", "topic", "topicFromEnv",
    "partitionLimitation", "lagThreshold", "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
    "excludePersistentLag", "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "version", "tls", "unsafeSsl", "sasl", "saslTokenProvider", "awsRegion",
}
#: Read from the environment outside the worker's settings: none (RERANK_CACHE_DIR is the engine
#: setting cache_dir since 0.3).
OTHER_WORKER_VARIABLES: set[str] = set()


def _documents() -> dict[str, list[dict]]:
    return {path.name: [d for d in yaml.safe_load_all(path.read_text()) if d] for path in sorted(K8S.glob("*.yaml"))}


DOCUMENTS = _documents()
MANIFESTS = [(name, doc) for name, docs in DOCUMENTS.items() if name != "kustomization.yaml" for doc in docs]


def _one(kind: str, name: str | None = None) -> dict:
    found = [doc for _, doc in MANIFESTS if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(workload: dict, name: str) -> dict:
    spec = workload["spec"]["template"]["spec"]
    [container] = [c for c in spec["containers"] if c["name"] == name]
    return container


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def _config() -> dict[str, str]:
    return _one("ConfigMap", "rerank-config")["data"]


def _cpus(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


# -- schemas ---------------------------------------------------------------------------------------
def test_the_tree_has_what_the_readme_names():
    assert {"configmap.yaml", "deployment.yaml", "pdb.yaml", "scaledobject.yaml", "topic-init-job.yaml",
            "secret.example.yaml", "keda-auth.example.yaml", "kustomization.yaml", "README.md"} <= {p.name for p in K8S.iterdir()}
    [kustomization] = DOCUMENTS["kustomization.yaml"]
    applied = {name for name in DOCUMENTS if name != "kustomization.yaml" and ".example." not in name}
    assert set(kustomization["resources"]) == applied


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name,doc", [m for m in MANIFESTS if not m[1]["apiVersion"].startswith("keda.sh/")],
                         ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_kubernetes_objects_match_the_schema(name, doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} is not valid for Kubernetes {version}: {exc}")


def test_the_strict_kubernetes_check_can_fail():
    deployment = copy.deepcopy(_one("Deployment", "rerank-worker"))
    spec = deployment["spec"]["template"]["spec"]
    spec["terminationGracePeriod"] = spec.pop("terminationGracePeriodSeconds")  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriod"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def _strict(schema: dict) -> dict:
    """The CRD schema as the API server applies it with strict field validation (kubectl's
    default): no field the schema does not name, unless it keeps unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def _crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in KEDA_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schemas[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


@pytest.mark.parametrize("name,doc", [m for m in MANIFESTS if m[1]["apiVersion"].startswith("keda.sh/")],
                         ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_keda_objects_match_the_crd(name, doc):
    schemas = _crd_schemas()
    key = (doc["apiVersion"], doc["kind"])
    assert key in schemas, f"{name}: no vendored KEDA CRD for {key}"
    errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_strict_crd_check_can_fail():
    """A misspelt field and a wrong type are caught (KEDA would drop the first silently)."""
    schemas = _crd_schemas()
    scaled = copy.deepcopy(_one("ScaledObject"))
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    scaled["spec"]["minReplicaCount"] = "two"
    messages = [e.message for e in jsonschema.Draft7Validator(schemas[(KEDA_GROUP, "ScaledObject")]).iter_errors(scaled)]
    assert any("maxReplicas" in m for m in messages) and any("'two'" in m for m in messages), messages


# -- rules between the objects -----------------------------------------------------------------------
def _shutdown_grace_s(worker: dict) -> float:
    """RERANK_SHUTDOWN_GRACE_S as the worker would see it: the manifest's value, else the
    settings' default once it has one, else the ~20 s assumed."""
    value = _env(worker).get("RERANK_SHUTDOWN_GRACE_S", {}).get("value") or _config().get("RERANK_SHUTDOWN_GRACE_S")
    if value is not None:
        return float(value)
    field = WorkerSettings.model_fields.get("shutdown_grace_s")
    return float(field.default) if field is not None else DEFAULT_SHUTDOWN_GRACE_S


def test_the_kubelet_waits_longer_than_the_worker_takes_to_stop():
    deployment = _one("Deployment", "rerank-worker")
    worker = _container(deployment, "worker")
    grace = _shutdown_grace_s(worker)
    period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period >= grace + GRACE_MARGIN_S, f"terminationGracePeriodSeconds {period} <= shutdown grace {grace} s + {GRACE_MARGIN_S}"


def test_threads_match_the_cpu_limit():
    deployment = _one("Deployment", "rerank-worker")
    worker = _container(deployment, "worker")
    resources = worker["resources"]
    limit = _cpus(resources["limits"]["cpu"])
    # Whole CPUs, requests = limits (cpu and memory): Guaranteed QoS, no throttled parallel
    # sections, and exclusive cores are possible (static CPU manager) where pinning is wanted.
    assert limit == int(limit) >= 1, f"CPU limit {limit} is not a whole number of CPUs"
    assert _cpus(resources["requests"]["cpu"]) == limit
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    threads = _env(worker)["RERANK_THREADS"]
    if "value" in threads:
        assert int(threads["value"]) == limit
    else:
        ref = threads["valueFrom"]["resourceFieldRef"]
        assert (ref.get("containerName"), ref["resource"], str(ref.get("divisor", "1"))) == ("worker", "limits.cpu", "1")
    # And the worker's own reckoning from its cgroup quota comes to the same (rounded down).
    assert max(1, math.floor(limit)) == int(limit)


def test_at_most_one_replica_per_request_partition():
    scaled = _one("ScaledObject")
    partitions = int(_config()["RERANK_REQUEST_PARTITIONS"])
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "rerank-worker" and spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    # A drain (one pod at a time, pdb.yaml) always leaves a replica to answer.
    assert _one("PodDisruptionBudget")["spec"]["maxUnavailable"] < spec["minReplicaCount"]


def test_the_scaler_watches_the_group_and_topic_the_workers_use():
    config = _config()
    [trigger] = _one("ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert set(metadata) <= KAFKA_SCALER_METADATA, set(metadata) - KAFKA_SCALER_METADATA
    assert metadata["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
    assert metadata["consumerGroup"] == config["RERANK_GROUP_ID"]
    assert metadata["topic"] == config["RERANK_REQUEST_TOPIC"]
    assert re.fullmatch(r"[1-9][0-9]*", metadata["lagThreshold"])
    assert metadata.get("allowIdleConsumers", "false") == "false"


def test_labels_select_the_worker_pods():
    deployment = _one("Deployment", "rerank-worker")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"], _one("PodDisruptionBudget")["spec"]["selector"],
                     *[c["labelSelector"] for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]]):
        assert selector["matchLabels"].items() <= pod_labels.items()


def test_probes_use_the_worker_endpoints():
    worker = _container(_one("Deployment", "rerank-worker"), "worker")
    env = _env(worker)
    assert env["RERANK_HTTP_HOST"]["value"] == "0.0.0.0"  # reachable from the kubelet
    [port] = worker["ports"]
    assert port["name"] == "http" and port["containerPort"] == int(env["RERANK_HTTP_PORT"]["value"])
    assert (worker["readinessProbe"]["httpGet"]["path"], worker["livenessProbe"]["httpGet"]["path"]) == ("/ready", "/healthz")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert worker[probe]["httpGet"]["port"] == "http"
    source = (ROOT / "streams" / "app.py").read_text()
    for path in ("/ready", "/healthz", "/metrics"):
        assert f'@app.page("{path}")' in source, f"the worker no longer serves {path}"
    # The first start may quantize the model: the startup probe allows minutes before liveness.
    startup = worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_topic_init_job_runs_the_worker_image_with_the_same_settings():
    job = _one("Job", "rerank-topic-init")
    [container] = job["spec"]["template"]["spec"]["containers"]
    worker = _container(_one("Deployment", "rerank-worker"), "worker")
    assert container["command"] == ["python", "-m", "streams", "init-topics"]
    assert container["image"] == worker["image"] and container["envFrom"] == worker["envFrom"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def _known_variables() -> set[str]:
    return set(OTHER_WORKER_VARIABLES) | setting_variables()


def test_every_setting_is_one_the_worker_knows_and_accepts(monkeypatch):
    """A misspelt variable would be ignored by the worker (extra="ignore"); a bad value would stop it."""
    config = _config()
    worker = _container(_one("Deployment", "rerank-worker"), "worker")
    literal = {name: item["value"] for name, item in _env(worker).items() if "value" in item}
    ours = {name for name in [*config, *literal] if name.startswith(("RERANK_", "KAFKA_"))}
    assert ours <= _known_variables(), ours - _known_variables()
    for var in list(__import__("os").environ):
        if var.startswith(("RERANK_", "KAFKA_")):
            monkeypatch.delenv(var)
    for name, value in {**config, **literal, "RERANK_THREADS": worker["resources"]["limits"]["cpu"]}.items():
        if name.startswith(("RERANK_", "KAFKA_")):
            monkeypatch.setenv(name, str(value))
    settings = load_settings()
    assert settings.request_partitions == int(config["RERANK_REQUEST_PARTITIONS"])
    assert settings.engine_config.threads == int(_cpus(worker["resources"]["limits"]["cpu"]))
    assert settings.engine_config.cpu_pinning is False


def test_the_prepare_init_container_fills_the_cache_the_worker_reads():
    """The worker image has no torch: a pod's init container makes what it loads, with its settings."""
    spec = _one("Deployment", "rerank-worker")["spec"]["template"]["spec"]
    [prepare] = spec["initContainers"]
    worker = _container(_one("Deployment", "rerank-worker"), "worker")
    assert prepare["command"] == ["python", "-m", "streams", "prepare"]
    assert prepare["image"].startswith("kafka-rerank-prepare:") and worker["image"].startswith("kafka-rerank:")
    assert prepare["envFrom"] == worker["envFrom"]
    for name in ("RERANK_CACHE_DIR", "HF_HOME"):
        assert _env(prepare)[name] == _env(worker)[name]
    mounts = {m["name"]: m["mountPath"] for m in prepare["volumeMounts"]}
    assert mounts["model-cache"] == {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}["model-cache"]
    # Guaranteed QoS holds only if every container, init containers too, has requests = limits
    assert prepare["resources"]["requests"] == prepare["resources"]["limits"]
