"""No GPU here: asking for CUDA falls back to the CPU, and the log line says where it runs and why."""
from __future__ import annotations

import logging
import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engines import EngineConfig, RerankJob, build_reranker  # noqa: E402
from engines.config import default_cache_dir  # noqa: E402
from engines.export import ExportCache  # noqa: E402
from engines.models import ModelFolder  # noqa: E402
from engines.onnx_engine import OnnxBackend  # noqa: E402
from engines.testmodel import ensure_test_model  # noqa: E402
from engines.torch_engine import CROSS  # noqa: E402


def test_onnx_cuda_request_without_cuda_provider_falls_back_to_cpu_and_says_so(caplog):
    import onnxruntime as ort

    folder = ModelFolder.load(str(ensure_test_model()))
    with caplog.at_level(logging.INFO, logger="engines"):
        backend = OnnxBackend(ExportCache(folder, CROSS, default_cache_dir()), None, 0, 0, "cuda", "fp16", None)
    if "CUDAExecutionProvider" in ort.get_available_providers():  # pragma: no cover - a GPU box
        return
    assert backend.device == "cpu"
    lines = [r.getMessage() for r in caplog.records if "runs on" in r.getMessage()]
    assert len(lines) == 1 and "CPUExecutionProvider" in lines[0] and "fell back to CPU" in lines[0]
    ids = np.array([[101, 2054, 102, 3000, 102]], dtype=np.int64)
    assert backend.run(ids, np.ones_like(ids), np.zeros_like(ids)).shape == (1,)


def test_auto_device_runs_on_cpu_without_a_gpu():
    reranker = build_reranker(EngineConfig(engine="onnx", model=str(ensure_test_model()), precision="fp32",
                                           device="auto"))
    [outcome] = reranker.rerank([RerankJob("where does it run", ["on the CPU", "on a GPU"])])
    assert reranker.device == "cpu" and outcome.scores.shape == (2,)
