"""ONNX Runtime engine.

CPU: the exported graph with ONNX Runtime's transformer fusions, in fp32 or static int8
(per-channel int8 weights, activation scales calibrated once on the texts OpenVINO's NNCF
calibrates on; VNNI kernels where the CPU has them; the feed-forward blocks and the attention's
probability MatMuls stay fp32). Static, so that a pair's int8 score does not depend on the other
pairs or the padding of its micro-batch (:func:`engines.export.onnx_int8_static`); the dynamic
int8 before it (activations quantized per batch) moved scores by up to 6e-3 with the batch, and
was faster: the static model runs at about fp32's pairs/s (BENCHMARKS.md, "ONNX int8 whatever
shares the window").
CUDA: the fused graph in fp16 (or fp32) on the CUDA execution provider when onnxruntime-gpu is
installed and a GPU is visible; otherwise the CPU provider, said once in the log.
"""

from __future__ import annotations

import logging

import numpy as np

from engines.calibration import calibration_batches, calibration_key
from engines.export import ONNX_INT8_RECIPE, ExportCache, input_names, onnx_fp16, onnx_fp32, onnx_int8_static

log = logging.getLogger("engines.onnx")

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class OnnxBackend:
    """An ``onnxruntime.InferenceSession`` over the cached export of one model and task."""

    runtime = "onnx"

    def __init__(self, cache: ExportCache, tokenizer, max_length: int, pad_id: int, device: str, precision: str,
                 threads: int | None, cpu_pinning: bool = False):
        import onnxruntime as ort

        self.names = input_names(cache.folder)
        reason = ""
        session = None
        if device == "cuda":
            if CUDA_PROVIDER not in ort.get_available_providers():
                reason = f"{CUDA_PROVIDER} is not in this onnxruntime (install onnxruntime-gpu)"
            else:
                gpu_precision = "fp32" if precision == "fp32" else "fp16"  # no int8/bf16 CUDA kernels here
                path = onnx_fp32(cache) if gpu_precision == "fp32" else onnx_fp16(cache)
                try:
                    session = _session(ort, path, [CUDA_PROVIDER, CPU_PROVIDER], threads, cpu_pinning)
                except Exception as exc:  # noqa: BLE001 - a broken CUDA install must not take the worker down
                    reason = f"{CUDA_PROVIDER} failed to start ({exc.__class__.__name__}: {exc})"
                else:
                    if session.get_providers()[0] != CUDA_PROVIDER:
                        reason = f"{CUDA_PROVIDER} was dropped by onnxruntime (driver or CUDA library mismatch)"
                        session = None
                    else:
                        self.precision, self.path = gpu_precision, path
        if session is None:
            self.precision = "int8" if precision == "int8" else "fp32"
            if self.precision == "int8":  # the calibration batches are built only if the int8 model is made
                self.path = onnx_int8_static(cache, lambda: calibration_batches(cache, tokenizer, max_length, pad_id),
                                             calibration_key(ONNX_INT8_RECIPE))
            else:
                self.path = onnx_fp32(cache)
            session = _session(ort, self.path, [CPU_PROVIDER], threads, cpu_pinning)
        self.session = session
        provider = session.get_providers()[0]
        self.device = "cuda" if provider == CUDA_PROVIDER else "cpu"
        # The one line that says what runs where (and, after a fallback, why).
        log.info(
            "onnx: %s (%s, %s) runs on %s%s",
            cache.folder.name, cache.task, self.precision, provider, f"; fell back to CPU: {reason}" if reason else "",
        )

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.session.run(None, {name: feeds[name] for name in self.names})[0]


def session_options(ort, threads: int | None, cpu_pinning: bool = False):
    """``SessionOptions`` of every session: the graph fused, ``threads`` intra-op threads, no spinning
    unless the process owns its cores."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        # A thread count set here also keeps ORT from pinning its threads (it pins them only when
        # it picks the count itself), so co-located replicas do not share cores.
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one graph at a time; parallelism is inside the ops
    # ORT's intra-op threads spin-wait between parallel sections by default: CPU time that
    # co-located replicas (and a cgroup quota) lose. Sections here are whole matmuls of a batch,
    # so waking a sleeping thread costs little beside them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if cpu_pinning else "0")
    options.log_severity_level = 3  # the CUDA provider warns about optional libraries it does not need
    return options


def _session(ort, path, providers: list[str], threads: int | None, cpu_pinning: bool = False):
    return ort.InferenceSession(str(path), sess_options=session_options(ort, threads, cpu_pinning), providers=providers)
