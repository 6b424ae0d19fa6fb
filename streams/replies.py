"""Turning an engine's outcome into the response a client reads (no Kafka here)."""
from __future__ import annotations

import numpy as np

from engines import RerankOutcome
from engines.families import activate
from schemas import DocumentText, RankedResult, RerankRequest, RerankResponse, ResponseMeta
from schemas.response import rank_results


def relevance(outcome: RerankOutcome, raw_scores: bool) -> np.ndarray:
    """Scores as the client asked for them: the cross-encoder's score through the model's own
    activation (what sentence-transformers' CrossEncoder.predict applies: a sigmoid unless the
    model's config names another, e.g. Identity for the ms-marco cross-encoders), or the raw
    score itself; first-stage scores (cosine, BM25, the client's own) are passed through either
    way, on their own scale, as the contract says."""
    scores = outcome.scores.astype(np.float64)
    if outcome.score_kind == "logit" and not raw_scores:
        scored = outcome.cross_encoded
        scores[scored] = activate(outcome.activation, scores[scored])
    return scores


def ranked_response(request: RerankRequest, outcome: RerankOutcome, *, model: str, engine: str,
                    worker: str, queue_ms: float, inference_ms: float, total_ms: float) -> RerankResponse:
    scores = relevance(outcome, request.raw_scores)
    texts = request.texts() if request.return_documents else None
    ids = request.ids()
    results = [
        RankedResult(
            index=i,
            id=ids[i],
            relevance_score=float(scores[i]),
            stage="cross_encoder" if (outcome.cross_encoded[i] or outcome.score_kind == "cosine") else "prefilter",
            document=DocumentText(text=texts[i]) if texts is not None else None,
        )
        for i in range(len(ids))
    ]
    return RerankResponse(
        request_id=request.request_id,
        model=model,
        engine=engine,
        results=rank_results(results, request.top_n),
        meta=ResponseMeta(
            documents=len(ids),
            scored_by_cross_encoder=int(outcome.cross_encoded.sum()),
            prefiltered=outcome.prefiltered,
            queue_ms=round(queue_ms, 3),
            inference_ms=round(inference_ms, 3),
            total_ms=round(total_ms, 3),
            worker=worker,
        ),
    )
