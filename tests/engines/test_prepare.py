"""The prepare step (engines.prepare, ``python -m streams prepare``) and a worker without torch.

The CPU worker image has no torch (nor NNCF): it serves from what the prepare step left in the cache
volume. Here a fresh interpreter in which torch and NNCF cannot be imported stands in for it: it
serves from a prepared cache, and with an empty one it stops with ArtefactMissing naming what it
would have had to make.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines import EngineConfig, RerankJob
from engines import fidelity
from engines.export import ExportCache
from engines.models import ArtefactMissing, ModelFolder
from engines.policy import plan_job
from engines.prepare import prepare
from engines.reranker import warm_jobs
from engines.testmodel import ensure_test_model
from engines.torch_engine import CROSS
from vocabulary import PREFILTER_METHODS

REPO = Path(__file__).resolve().parents[2]

#: A worker start (engines.prepare.prepare, then a request) where torch and NNCF are not installed:
#: a None in sys.modules makes their import fail and importlib.util.find_spec (transformers' check)
#: find nothing, as in the worker image.
WITHOUT_TORCH = """
import json, sys
sys.modules["torch"] = None
sys.modules["nncf"] = None
from engines import EngineConfig, RerankJob
from engines.models import ArtefactMissing
from engines.prepare import prepare
try:
    reranker = prepare(EngineConfig(**json.loads(sys.argv[1])))
except ArtefactMissing as exc:
    print("missing:", exc)
    sys.exit(3)
[outcome] = reranker.rerank([RerankJob("how do I open a file", ["open() returns a file object", "cats sleep"])])
print("served:", reranker.engine_name, list(outcome.order))
"""


def start_without_torch(config: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, json.dumps(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model() -> str:
    return str(ensure_test_model())


def test_a_prepared_cache_serves_without_torch_and_an_empty_one_is_refused_clearly(model, tmp_path):
    config = {"engine": "onnx", "precision": "int8", "device": "cpu", "model": model, "cache_dir": str(tmp_path)}
    refused = start_without_torch(config)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "making model.fp32.onnx" in refused.stdout and "needs torch" in refused.stdout, refused.stdout
    assert "prepare step" in refused.stdout

    prepare(EngineConfig(**config))  # here torch is installed: export, int8, the start-up check
    assert len(list((tmp_path / "verified").glob("*.json"))) == 1
    served = start_without_torch(config)
    assert served.returncode == 0, served.stdout + served.stderr
    assert "served: onnx-int8" in served.stdout


def test_only_the_configured_first_stage_is_built_ahead(model, tmp_path):
    config = EngineConfig(engine="onnx", precision="fp32", device="cpu", model=model, cache_dir=str(tmp_path),
                          prefilter_method="bm25")
    reranker = prepare(config)
    assert not (tmp_path / "models").exists(), "the static first stage's model was distilled for a bm25 worker"
    exported = [p.name for p in (tmp_path / "onnx").iterdir()]
    assert exported == [ExportCache(ModelFolder.load(model), CROSS, tmp_path).dir.name], "the bi-encoder was exported"
    [outcome] = reranker.rerank([RerankJob("q", [f"document {k}" for k in range(150)])])
    assert outcome.first_stage == "bm25"


def test_a_module_missing_while_making_an_artefact_is_named(model, tmp_path):
    cache = ExportCache(ModelFolder.load(model), CROSS, tmp_path)

    def make(out: Path) -> None:
        raise ModuleNotFoundError("No module named 'nncf'", name="nncf")

    with pytest.raises(ArtefactMissing, match=r"making model\.x\.xml of .* needs nncf, which is not installed here"):
        cache.get_or_make("model.x.xml", make, "quantized")
    assert not (cache.dir / "model.x.xml").exists()
    assert isinstance(ArtefactMissing("x"), OSError)  # the worker's start-up reports it as it reports a missing model


def test_a_verdict_is_found_whatever_torch_and_nncf_versions_made_it(model, tmp_path, monkeypatch):
    folder = ModelFolder.load(model)
    key = fidelity._verdict_file(tmp_path, folder, "onnx-int8", "cpu", "/cache/model.int8.onnx")
    real = fidelity._version
    monkeypatch.setattr(fidelity, "_version", lambda p: "-" if p in ("torch", "nncf") else real(p))
    assert fidelity._verdict_file(tmp_path, folder, "onnx-int8", "cpu", "/cache/model.int8.onnx") == key
    monkeypatch.setattr(fidelity, "_version", lambda p: "0.0" if p == "onnxruntime" else real(p))
    assert fidelity._verdict_file(tmp_path, folder, "onnx-int8", "cpu", "/cache/model.int8.onnx") != key
    assert md.version("onnxruntime") != "0.0"


@pytest.mark.parametrize("stages", [["static"], ["bi-encoder", "bm25"], list(PREFILTER_METHODS)])
def test_warm_jobs_run_each_named_first_stage_on_a_cut_request(stages):
    config = EngineConfig()
    cut = [plan_job(job, config).method for job in warm_jobs(stages) if plan_job(job, config).prefilter]
    assert cut == stages
    assert all(not plan_job(job, config).prefilter for job in warm_jobs(stages, cross_encoder=False))


def test_an_unknown_first_stage_is_refused_before_anything_is_built(tmp_path):
    with pytest.raises(ValueError, match="unknown first stage nope"):
        prepare(EngineConfig(model=str(tmp_path / "absent"), cache_dir=str(tmp_path)), ["nope"])
