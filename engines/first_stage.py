"""First stages of the hybrid reranker: cheap scores that decide which documents the
cross-encoder reads.

One small interface, :class:`FirstStage`: a window's jobs (query, documents, the caller's own
scores) and the window's :class:`~engines.batching.TokenCache` in, one float array per job out,
higher = more relevant. The methods (``EngineConfig.prefilter_method`` is the default, a
request may choose another):

==============  =================================================================================
``bi-encoder``  cosine of all-MiniLM-L6-v2 embeddings (a transformer pass per document; documents
                that come back are cheap, from its embedding cache)
``static``      cosine of static token embeddings distilled from the same model with model2vec
                (:mod:`engines.static_embeddings`): a sum of table rows per document
``bm25``        BM25 (Lucene variant, k1 1.5, b 0.75, as ``bm25s``) over the request's own
                documents, on the cross-encoder's WordPiece tokens
``client``      the scores the caller sent with its documents (its retriever's): no work at all
``static+bm25`` reciprocal-rank fusion (k = 60) of ``static`` and ``bm25``
==============  =================================================================================

``static`` and ``bm25`` read a document's first tokens through the window's token cache, which
the cross-encoder's encoder fills, so a document is tokenized once for both stages (``static``
only when the cross-encoder's tokenizer is MiniLM's own: checked, not assumed) and never far past
what the stages read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engines.batching import TextEncoder, TokenCache
from engines.bi_encoder import BiEncoder
from vocabulary import BI_ENCODER, BM25, CLIENT, STATIC, STATIC_BM25

#: What the scores of a method are (``RerankOutcome.score_kind`` when no cross-encoder scored).
SCORE_KINDS = {BI_ENCODER: "cosine", STATIC: "cosine", BM25: "bm25", CLIENT: "client", STATIC_BM25: "rrf"}
#: Tokens of a text that ``static`` and ``bm25`` read at most. They read them from the window's
#: token cache when it holds no more than that per text (the cross-encoder reads 512 or fewer);
#: behind a longer-context cross-encoder they tokenize a 512-token prefix of their own instead,
#: rather than tokenize every candidate as far as it would read the few it keeps.
READ_TOKENS = 512
#: Reciprocal-rank fusion constant (Cormack et al. 2009).
RRF_K = 60
BM25_K1 = 1.5
BM25_B = 0.75


@dataclass
class StageJob:
    """What a first stage sees of one job.

    Attributes:
        query: the query text.
        documents: the candidate texts.
        client_scores: float64, one per document, NaN where the caller sent none; ``None`` when
            it sent none at all.
    """

    query: str
    documents: Sequence[str]
    client_scores: np.ndarray | None = None


class FirstStage(Protocol):
    """Scores every document of every job; one float array per job, higher = more relevant."""

    method: str

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]: ...


def ranked(indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``indices`` sorted by ``values`` descending, ties by index ascending."""
    if len(indices) == 0:
        return indices
    return indices[np.lexsort((indices, -values.astype(np.float64)))]


class ClientStage:
    """The caller's own scores, as they are. Every document must have a finite one (the
    reranker checks before any work): a missing score is an error, never a guess."""

    method = CLIENT

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]:
        out = []
        for job in jobs:
            scores = job.client_scores
            if scores is None or len(scores) != len(job.documents) or not np.isfinite(scores).all():
                raise ValueError("prefilter method 'client' needs a finite score for every document")
            out.append(scores.astype(np.float32))
        return out


def bm25_scores(query: np.ndarray, documents: Sequence[np.ndarray], k1: float = BM25_K1, b: float = BM25_B) -> np.ndarray:
    """BM25 of each document (token id arrays) for the query's token ids, with document
    frequencies and the average length taken over ``documents`` themselves.

    The Lucene variant as ``bm25s`` computes it: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    tf part = tf / (tf + k1 (1 - b + b |d| / avg|d|)), summed over the query's tokens (a token
    that occurs twice in the query counts twice). Only the query's tokens are counted, so the
    cost is one pass over the documents' ids.
    """
    n = len(documents)
    out = np.zeros(n, dtype=np.float32)
    terms, weights = np.unique(np.asarray(query, dtype=np.int64), return_counts=True)
    if n == 0 or len(terms) == 0:
        return out
    lengths = np.fromiter((len(d) for d in documents), dtype=np.int64, count=n)
    if lengths.sum() == 0:
        return out
    flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in documents])
    owner = np.repeat(np.arange(n), lengths)
    slot = np.minimum(np.searchsorted(terms, flat), len(terms) - 1)
    hit = terms[slot] == flat
    tf = np.bincount(owner[hit] * len(terms) + slot[hit], minlength=n * len(terms)).reshape(n, len(terms))
    df = np.count_nonzero(tf, axis=0)
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    norm = k1 * (1 - b + b * lengths / lengths.mean())
    return ((tf / (tf + norm[:, None])) @ (idf * weights)).astype(np.float32)


def read_tokens(texts: Sequence[str], tokens: TokenCache, own: TextEncoder | None = None) -> list[np.ndarray]:
    """Ids of the first :data:`READ_TOKENS` tokens of each text: from the window's cache (which
    the cross-encoder then reuses) when it reads no further than that, else from ``own`` (an
    encoder of the same tokenizer capped at :data:`READ_TOKENS`)."""
    if tokens.cap <= READ_TOKENS or own is None:
        return [ids[:READ_TOKENS] for ids in tokens.encode(texts).ids]
    return own.encode(texts).ids


class Bm25Stage:
    """BM25 over each request's own documents, on the cross-encoder's tokens (the window's
    cache: the first tokens it would read of each text, at most :data:`READ_TOKENS`)."""

    method = BM25

    def __init__(self):
        self._own: dict[str, TextEncoder] = {}  # by tokenizer signature, for long-context cross-encoders

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]:
        if tokens is None:
            raise ValueError("the bm25 first stage needs the cross-encoder's tokenizer")
        own = None
        if tokens.cap > READ_TOKENS:
            if tokens.signature not in self._own:
                self._own[tokens.signature] = TextEncoder(tokens.owner.tokenizer, READ_TOKENS)
            own = self._own[tokens.signature]
        out = []
        for job in jobs:
            ids = read_tokens([job.query, *job.documents], tokens, own)
            out.append(bm25_scores(ids[0], ids[1:]))
        return out


class BiEncoderStage:
    """Bi-encoder cosines, all texts of the window embedded in one batch (and through the
    window's token cache when the bi-encoder's tokenizer is the cross-encoder's)."""

    method = BI_ENCODER

    def __init__(self, bi_encoder: Callable[[], BiEncoder]):
        self._bi_encoder = bi_encoder  # built on first use

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]:
        texts: list[str] = []
        for job in jobs:
            texts.append(job.query)
            texts.extend(job.documents)
        vectors = self._bi_encoder().embed(texts, tokens)
        out, at = [], 0
        for job in jobs:
            n = len(job.documents)
            query, docs = vectors[at], vectors[at + 1 : at + 1 + n]
            out.append((docs @ query).astype(np.float32) if n else np.zeros(0, dtype=np.float32))
            at += 1 + n
        return out


def reciprocal_rank_fusion(score_lists: Sequence[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """Sum over the lists of 1 / (k + rank), rank 1 = the best score (ties by index)."""
    n = len(score_lists[0])
    fused = np.zeros(n, dtype=np.float64)
    for scores in score_lists:
        rank = np.empty(n, dtype=np.int64)
        rank[ranked(np.arange(n), scores)] = np.arange(1, n + 1)
        fused += 1.0 / (k + rank)
    return fused.astype(np.float32)


class FusionStage:
    """Reciprocal-rank fusion of two or more first stages."""

    def __init__(self, method: str, stages: Sequence[FirstStage]):
        self.method = method
        self.stages = list(stages)

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]:
        per_stage = [stage.score(jobs, tokens) for stage in self.stages]
        return [reciprocal_rank_fusion([scores[i] for scores in per_stage]) if len(jobs[i].documents)
                else np.zeros(0, dtype=np.float32) for i in range(len(jobs))]
