"""OpenVINO engine (CPU).

Runs the exported ONNX graph with OpenVINO's CPU plugin. ``int8`` is *static* quantization by NNCF:
activation ranges are calibrated once on (query, passage) pairs from a corpus of real English
text (the standard-library passages of :mod:`engines.corpus`, the engine layer's own), with SmoothQuant for transformer
activations, and the quantized model is cached as OpenVINO IR next to the ONNX export. ``fp32``
runs the graph as exported; ``bf16`` asks the plugin for bf16 inference (CPUs with AVX512-BF16
or AMX).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from engines.calibration import calibration_batches, calibration_key
from engines.config import cpu_has_int8_dot_product
from engines.export import ExportCache, input_names, onnx_fp32
from engines.torch_engine import CROSS

log = logging.getLogger("engines.openvino")

#: The scoring head's MatMuls (BERT's pooler and classifier, ELECTRA / XLM-R's classifier dense and
#: out_proj, DeBERTa's pooler, ModernBERT's head): they run on one vector per pair, so int8 saves
#: nothing there, and quantizing them cost most of the ranking accuracy NNCF lost on the family
#: stand-ins (Pearson with fp32 0.90 -> 0.99 on the BERT one; 0.9992 -> 0.9994 on MiniLM-L6's real
#: encoder), so they stay fp32.
HEAD_MATMUL = re.compile(r"/(classifier|pooler|head)/")
#: Per family, more MatMuls that stay fp32 because int8 there lost the family's ranking: the
#: attention output projection of DeBERTa-v2, XLM-RoBERTa and ELECTRA. With it int8, documents of
#: repeated characters, whitespace or non-ASCII text moved by 1-3 logits (up to 40 % of the
#: corpus pairs' ranking) on their stand-ins, while corpus pairs kept a Pearson of 0.998; fp32
#: there, every edge document stayed within 0.9. It is 1/12 of a layer's weight-MatMul work, but
#: costs int8 more of its speed than that, as the fp32 island breaks the int8 chain around it
#: (BENCHMARKS.md, "What the int8 recipe's fp32 layers cost": ``python -m loadgen.bench.int8_recipe``).
#: (BERT, MiniLM-L6's real encoder and ModernBERT were within the limits without it; on the real
#: encoder it changed nothing: Pearson 0.9994 vs 0.9993.)
_ATTENTION_OUTPUT = re.compile(r"attention/output/dense/MatMul$")
FAMILY_FP32_MATMULS = {family: _ATTENTION_OUTPUT
                       for family in ("deberta-v2", "deberta", "xlm-roberta", "roberta", "camembert", "electra")}
#: Bumped when the int8 recipe changes, so cached IRs are re-made.
INT8_RECIPE = 4


def fp32_matmuls(model, model_type: str) -> list[str]:
    """Names of the MatMuls of a cross-encoder's OpenVINO model that int8 leaves in fp32: its
    scoring head (:data:`HEAD_MATMUL`) and its family's (:data:`FAMILY_FP32_MATMULS`)."""
    family = FAMILY_FP32_MATMULS.get(model_type)
    names = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"]
    return [name for name in names if HEAD_MATMUL.search(name) or (family is not None and family.search(name))]


def openvino_int8(cache: ExportCache, tokenizer, max_length: int, pad_id: int) -> Path:
    """NNCF static int8 IR of the model (made on first use, then cached). Some of a
    cross-encoder's MatMuls stay fp32 (:func:`fp32_matmuls`).

    On a CPU without VNNI or AMX, NNCF's overflow fix covers every layer (7-bit weights), not
    only the first: AVX2's int8 kernels add pairs of u8 x s8 products in 16 bits, which saturate
    with full-range weights. Without it the family stand-ins lost their ranking there (edge
    documents moved by up to 4 logits, on a Zen 3 EPYC); with it they kept it (Pearson 0.997-0.999).
    ``precision="auto"`` runs OpenVINO in fp32 on such CPUs anyway; this is for an explicit int8.
    """
    source = onnx_fp32(cache)
    overflow_fix = cpu_has_int8_dot_product() is False

    def make(out: Path) -> None:
        import nncf
        import openvino as ov

        model = ov.Core().read_model(str(source))
        batches = calibration_batches(cache, tokenizer, max_length, pad_id)
        kept = fp32_matmuls(model, cache.folder.model_type) if cache.task == CROSS else []
        quantized = nncf.quantize(
            model,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(batches),
            ignored_scope=nncf.IgnoredScope(names=kept) if kept else None,
            advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE)
            if overflow_fix else None,
        )
        ov.save_model(quantized, str(out), compress_to_fp16=False)

    suffix = "-overflow-fix" if overflow_fix else ""
    return cache.get_or_make(f"model.int8-{calibration_key(INT8_RECIPE)}{suffix}.xml", make,
                             "quantized (NNCF static int8" + (", overflow fix for a CPU without VNNI)" if overflow_fix else ")"))


def compile_config(precision: str, threads: int | None, cpu_pinning: bool) -> dict:
    """The CPU plugin's compile properties."""
    config = {
        "PERFORMANCE_HINT": "LATENCY",  # one stream using every thread: one micro-batch at a time
        # bf16 only when asked: it changes scores, and some CPUs would pick it by default.
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        # The plugin pins its threads to cores by default, and every process of a host picks the
        # same cores: two 1-thread replicas then share one core, and the second adds nothing
        # (BENCHMARKS.md, "Replicas on one host"). Only a process that owns its cores pins.
        "ENABLE_CPU_PINNING": bool(cpu_pinning),
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVinoBackend:
    """An OpenVINO ``CompiledModel`` on CPU with a single inference request."""

    runtime = "openvino"
    # The CPU plugin generates and keeps code for every new input shape (CPU_RUNTIME_CACHE_CAPACITY=0
    # does not stop it, it only changes what is kept), so a worker fed free-form shapes grew
    # without end in a soak. With bucketed shapes it meets a few hundred at most, and memory
    # levels off (BENCHMARKS.md, "Soak").
    shape_buckets = True

    def __init__(self, cache: ExportCache, tokenizer, max_length: int, pad_id: int, device: str, precision: str, threads: int | None,
                 cpu_pinning: bool = False):
        import openvino as ov

        if device == "cuda":
            log.info("openvino: runs on CPU only; the cuda device is not used by this engine")
        self.device = "cpu"
        self.precision = precision if precision in ("int8", "bf16") else "fp32"
        path = openvino_int8(cache, tokenizer, max_length, pad_id) if self.precision == "int8" else onnx_fp32(cache)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", compile_config(self.precision, threads, cpu_pinning))
        self.request = self.compiled.create_infer_request()
        self.names = input_names(cache.folder)
        self.path = path
        log.info("openvino: %s (%s, %s) runs on CPU", cache.folder.name, cache.task, self.precision)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        result = self.request.infer({name: feeds[name] for name in self.names})
        return np.array(result[0])
