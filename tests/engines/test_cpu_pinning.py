"""Co-located replicas do not fight over cores: no runtime pins or spins unless asked to.

Checked where the setting lands (OpenVINO's compiled model, ONNX Runtime's session options,
libgomp's environment), not by a measurement: `python -m loadgen.bench.replicas` measures."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from conftest_engines import test_model_path  # noqa: F401

import engines.config as config
from engines import EngineConfig, build_reranker
from engines.onnx_engine import session_options
from engines.openvino_engine import compile_config

ALLOW_SPINNING = "session.intra_op.allow_spinning"


def _build(engine: str, model: str, **kwargs):
    return build_reranker(EngineConfig(engine=engine, model=model, precision="fp32", device="cpu", **kwargs))


def test_openvino_compile_config():
    assert compile_config("fp32", 1, cpu_pinning=False)["ENABLE_CPU_PINNING"] is False
    assert compile_config("int8", None, cpu_pinning=True)["ENABLE_CPU_PINNING"] is True
    assert EngineConfig().cpu_pinning is False


@pytest.mark.parametrize("pinning", [False, True])
def test_openvino_compiled_model_pins_only_when_asked(test_model_path, pinning, caplog):
    with caplog.at_level(logging.INFO, logger="engines"):
        reranker = _build("openvino", test_model_path, threads=1, cpu_pinning=pinning)
    compiled = reranker._cross.backend.compiled
    assert compiled.get_property("ENABLE_CPU_PINNING") is pinning
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    said = [r.getMessage() for r in caplog.records if "threads 1 as configured" in r.getMessage()]
    assert said and ("pinned to cores" if pinning else "not pinned") in said[0], said


def test_onnx_session_does_not_spin_unless_pinning(test_model_path, caplog):
    import onnxruntime as ort

    assert session_options(ort, 2).get_session_config_entry(ALLOW_SPINNING) == "0"
    assert session_options(ort, 2, cpu_pinning=True).get_session_config_entry(ALLOW_SPINNING) == "1"
    with caplog.at_level(logging.INFO, logger="engines"):
        reranker = _build("onnx", test_model_path)
    options = reranker._cross.backend.session.get_session_options()
    assert options.get_session_config_entry(ALLOW_SPINNING) == "0"
    # Threads from the CPU budget, set explicitly (which also keeps ORT from pinning them).
    budget = config.cpu_budget()
    assert options.intra_op_num_threads == budget.threads
    assert any(budget.describe() in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_openmp_wait_policy(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    config.openmp_wait_policy(cpu_pinning=True)
    assert "OMP_WAIT_POLICY" not in os.environ
    config.openmp_wait_policy(cpu_pinning=False)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the operator's own choice is kept
    config.openmp_wait_policy(cpu_pinning=False)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize("pinning,spin_count", [(False, "0"), (True, "300000")])
def test_torch_engine_openmp_threads_do_not_spin(test_model_path, pinning, spin_count):
    """End to end: build_reranker sets the policy before anything loads torch (device "auto"
    loads it to look for CUDA), so torch's own libgomp reads it: it prints its settings on load
    with OMP_DISPLAY_ENV=VERBOSE, and how long its threads spin is GOMP_SPINCOUNT (libgomp's
    default 300000; 0 under OMP_WAIT_POLICY=PASSIVE). Its threads are never bound to cores."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(OMP_DISPLAY_ENV="VERBOSE", HF_HUB_OFFLINE="1", PYTHONPATH=os.getcwd())
    code = (
        "from engines import EngineConfig, build_reranker\n"
        f"r = build_reranker(EngineConfig(engine='torch', model={test_model_path!r}, device='auto', threads=2, cpu_pinning={pinning}))\n"
        "import torch; torch.set_num_threads(2); print('engine', r.engine_name, torch.get_num_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "engine torch-" in done.stdout
    shown = {line.strip() for line in done.stderr.splitlines() if line.strip().startswith(("GOMP_SPINCOUNT", "OMP_PROC_BIND"))}
    # (libgomp shows its settings again when torch changes the thread count.)
    assert shown == {f"GOMP_SPINCOUNT = '{spin_count}'", "OMP_PROC_BIND = 'FALSE'"}, done.stderr[-3000:]
