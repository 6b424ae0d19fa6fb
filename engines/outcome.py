"""What the engine returns for one job: scores, the relevance the caller reads, stages, order.

The answer's ranking is decided here, once: ``relevance`` is what a client is given as each
document's score (the cross-encoder's score through the model's own activation, as
sentence-transformers' ``CrossEncoder.predict`` applies it, or the raw score when the job asks;
a first-stage score as it is), ``stages`` says which model gave it, and ``order`` is the
response order of the contract (``schemas.RerankResponse``): documents the cross-encoder scored
before those a prefilter cut, then relevance descending, then index ascending. A reply only has
to take ``order`` (and cut it at ``top_n``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engines.families import SIGMOID, activate
from engines.policy import JobPlan
from vocabulary import BI_ENCODER, CROSS_ENCODER_STAGE, PREFILTER_STAGE

#: ``RerankOutcome.score_kind`` of cross-encoder scores and of the bi-encoder engine's cosines
#: (the first stages' kinds are ``engines.first_stage.SCORE_KINDS``).
LOGIT = "logit"
COSINE = "cosine"


@dataclass(frozen=True)
class BestChunk:
    """The part of a document that gave it its score, for a document scored in parts (chunks, or
    the end that ``left`` truncation keeps): its position among them, its character span in the
    document's text (``text[start:end]`` scored alone gives the document's score), and how many
    parts were scored."""

    index: int
    start: int
    end: int
    chunks: int


@dataclass
class RerankOutcome:
    """Scores and ranking of one job.

    Attributes:
        scores: float32, one per document in the job's order. Where ``cross_encoded`` is True it is
            the cross-encoder's raw score (the logit; a two-logit head's margin ``l1 - l0``, a
            decoder's ``logit('yes') - logit('no')``); elsewhere the first stage's score (a cosine
            for ``static`` and ``bi-encoder``, a BM25 score, the caller's score, or a
            reciprocal-rank-fusion score).
        relevance: float64, one per document: the score the caller is given. The cross-encoder's
            score through ``activation`` (unless the job asked for raw scores), a first-stage
            score as it is.
        stages: one per document, ``"cross_encoder"`` or ``"prefilter"`` (a document a first
            stage cut): which model gave its relevance (:data:`vocabulary.Stage`).
        order: document indices in response order: cross-encoder stage first, then relevance
            descending, then index ascending.
        score_kind: ``"logit"`` when the cross-encoder scored documents; otherwise what the first
            stage's scores are (:data:`engines.first_stage.SCORE_KINDS`; ``"cosine"`` for the
            ``bi-encoder`` engine).
        cross_encoded: bool mask of the documents the cross-encoder scored.
        prefiltered: whether a first stage cut this job before cross-encoding.
        bi_encoder_scored: how many documents the bi-encoder scored.
        cross_encoder_scored: how many documents the cross-encoder scored.
        first_stage: the method that cut this job (``None`` when none did).
        activation: what turns a cross-encoder score into the model's relevance, as
            sentence-transformers applies it (``"sigmoid"``, ``"identity"`` or ``"tanh"``; see
            :func:`engines.families.activate`).
        best_chunks: for each document scored in parts (:mod:`engines.chunking`), the part that
            gave its score; absent for a document read whole (or truncated at its end).
        pairs_scored: the (query, text) pairs the cross-encoder scored for this job, chunks
            counted one by one.
    """

    scores: np.ndarray
    relevance: np.ndarray
    stages: tuple[str, ...]
    order: np.ndarray
    score_kind: str
    cross_encoded: np.ndarray
    prefiltered: bool
    bi_encoder_scored: int = 0
    cross_encoder_scored: int = 0
    first_stage: str | None = None
    activation: str = SIGMOID
    best_chunks: dict[int, BestChunk] = field(default_factory=dict)
    pairs_scored: int = 0


def response_order(relevance: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Indices in response order: not ``cut`` first, then ``relevance`` descending, then index."""
    n = len(relevance)
    return np.lexsort((np.arange(n), -relevance, cut.astype(np.int8))).astype(np.int64)


def cross_encoder_outcome(plan: JobPlan, scores: np.ndarray, cross_encoded: np.ndarray, score_kind: str,
                          activation: str, raw_scores: bool, best_chunks: dict[int, BestChunk] | None = None,
                          pairs_scored: int | None = None) -> RerankOutcome:
    """The outcome of a cross-encoder engine's job: ``scores`` holds the cross-encoder's raw
    score where ``cross_encoded``, the first stage's elsewhere; ``pairs_scored`` defaults to the
    documents the cross-encoder read (one pair each)."""
    relevance = scores.astype(np.float64)
    if not raw_scores:
        relevance[cross_encoded] = activate(activation, relevance[cross_encoded])
    cut = ~cross_encoded if plan.prefilter else np.zeros(plan.documents, dtype=bool)
    return RerankOutcome(
        scores=scores,
        relevance=relevance,
        stages=tuple(PREFILTER_STAGE if c else CROSS_ENCODER_STAGE for c in cut),
        order=response_order(relevance, cut),
        score_kind=score_kind,
        cross_encoded=cross_encoded,
        prefiltered=plan.prefilter,
        bi_encoder_scored=plan.documents if plan.prefilter and plan.method == BI_ENCODER else 0,
        cross_encoder_scored=int(cross_encoded.sum()),
        first_stage=plan.method,
        activation=activation,
        best_chunks=best_chunks or {},
        pairs_scored=int(cross_encoded.sum()) if pairs_scored is None else pairs_scored,
    )


def cosine_outcome(cosine: np.ndarray) -> RerankOutcome:
    """The outcome of the bi-encoder engine's job: every document by its cosine."""
    n = len(cosine)
    relevance = cosine.astype(np.float64)
    nothing_cut = np.zeros(n, dtype=bool)
    return RerankOutcome(
        scores=cosine.astype(np.float32),
        relevance=relevance,
        stages=(CROSS_ENCODER_STAGE,) * n,
        order=response_order(relevance, nothing_cut),
        score_kind=COSINE,
        cross_encoded=nothing_cut,
        prefiltered=False,
        bi_encoder_scored=n,
    )
