"""Cross-encoder reranking engines: score (query, document) pairs in token-budget batches.

Public surface::

    from engines import EngineConfig, RerankJob, RerankOutcome, Reranker, build_reranker

Engines (one module each): ``openvino`` (default on CPU; NNCF static int8 where the CPU has VNNI or
AMX, fp32 elsewhere), ``onnx`` (ONNX Runtime; CUDA execution provider when available), ``torch``
(the CrossEncoder's transformers model; fp16 on CUDA) and ``bi-encoder`` (cosine of sentence
embeddings). Any cross-encoder engine can prefilter long requests with the bi-encoder. Heavy
libraries are imported only by the engine that needs them, and nothing here needs Kafka, Faust or
pydantic.
"""

from engines.config import EngineConfig
from engines.reranker import Reranker, RerankJob, RerankOutcome, build_reranker

__all__ = ["EngineConfig", "RerankJob", "RerankOutcome", "Reranker", "build_reranker"]
