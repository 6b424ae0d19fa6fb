"""Cross-encoder reranking engines: score (query, document) pairs in token-budget batches.

One job: pairs in, scores out. Nothing here knows of Kafka, the wire format, Faust or pydantic, and nothing
here imports another package of this repository but :mod:`vocabulary` (``tests/test_layering.py`` holds it to that);
``streams``, ``loadgen`` and ``evaluation`` build on it. Besides the runtimes it holds what they
need to run offline: model folders and their export cache, the untrained-head test model
(:mod:`engines.testmodel`) and the text int8 calibration reads (:mod:`engines.corpus`).

Public surface::

    from engines import EngineConfig, RerankJob, RerankOutcome, Reranker, build_reranker
    from engines import JobPlan, JobRefused, JobTooLarge   # the request policy: Reranker.plan(job)
    reranker.rank_first_stage(query, documents, method="bm25")  # one first stage alone: scores, order

Engines (one module each): ``openvino`` (default on CPU; NNCF static int8 where the CPU has VNNI or
AMX, fp32 elsewhere), ``onnx`` (ONNX Runtime; CUDA execution provider when available), ``torch``
(the CrossEncoder's transformers model; fp16 on CUDA) and ``bi-encoder`` (cosine of sentence
embeddings). Any cross-encoder engine can prefilter long requests with a first stage
(:mod:`engines.first_stage`: static embeddings, BM25, the caller's scores, the bi-encoder). Heavy
libraries are imported only by the engine that needs them, and nothing here needs Kafka, Faust or
pydantic.
"""

from engines.config import EngineConfig
from engines.outcome import BestChunk, RerankOutcome
from engines.policy import JobPlan, JobRefused, JobTooLarge, RerankJob
from engines.reranker import Reranker, build_reranker

__all__ = ["BestChunk", "EngineConfig", "JobPlan", "JobRefused", "JobTooLarge", "RerankJob", "RerankOutcome",
           "Reranker", "build_reranker"]
