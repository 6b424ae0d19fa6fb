"""Making ahead what a worker with a given configuration loads, so that it starts in seconds.

A worker's first start exports the cross-encoder to ONNX, quantizes it (int8), checks it against the
model's own transformers forward pass (a passing verdict is kept under ``<cache>/verified``) and
builds its default first stage's model (``static``: distilled with model2vec; ``bi-encoder``:
exported and quantized). All of it lands in the cache folder (``EngineConfig.cache_dir``), and all
of it but the int8 inference needs torch (NNCF too, for OpenVINO's int8).

:func:`prepare` is that start without the serving: the worker runs it at start-up, and
``python -m streams prepare`` runs it alone, where torch is installed, to fill a cache that a
worker without torch (the CPU worker image) then serves from. Both take the same path through the
engines, so the prepare step leaves exactly the files the worker looks for; a worker that finds one
missing and cannot make it stops with :class:`engines.models.ArtefactMissing`.

Only the configured first stage (``EngineConfig.prefilter_method``) is built ahead: a request that
names another one builds it on first use, where this installation can (``first_stages`` names more).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from engines.config import EngineConfig
from engines.reranker import Reranker, build_reranker
from vocabulary import PREFILTER_METHODS

log = logging.getLogger("engines.prepare")

def prepare(config: EngineConfig, first_stages: Sequence[str] | None = None) -> Reranker:
    """The reranker ``config`` asks for, with its artefacts made (or found) in the cache: the
    cross-encoder's export, its quantized copy and start-up check verdict, and the models of
    ``first_stages`` (default: the configured one, ``config.prefilter_method``).

    Raises what :func:`engines.build_reranker` raises; :class:`~engines.models.ArtefactMissing`
    (an OSError) where an artefact is missing and this installation cannot make it.
    """
    stages = list(dict.fromkeys(first_stages if first_stages is not None else [config.prefilter_method]))
    unknown = [method for method in stages if method not in PREFILTER_METHODS]
    if unknown:
        raise ValueError(f"unknown first stage {', '.join(unknown)}; known: {', '.join(PREFILTER_METHODS)}")
    started = time.perf_counter()
    reranker = build_reranker(config)
    reranker.warmup(stages)
    log.info("prepared %s (model %s) and first stage %s in %.1f s", reranker.engine_name, reranker.model_name,
             ", ".join(stages) if reranker.kind is not None else "-", time.perf_counter() - started)
    return reranker
