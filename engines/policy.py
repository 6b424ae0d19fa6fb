"""The request policy: what the engine will do with one job, decided in one place.

:func:`plan_job` is the only place that decides, for one :class:`RerankJob`:

- **whether it is prefiltered**: when the job asks (``prefilter=True``), or, when it says
  nothing, when it has more than ``prefilter_threshold`` documents; and only where ``keep`` is
  below its number of documents (a cut that keeps everything would be wasted work). The
  bi-encoder engine cuts nothing: it scores every document by cosine.
- **by which first stage**: the job's ``method``, else ``prefilter_method``; **how many it
  keeps**: the job's ``keep``, else ``prefilter_keep``.
- **what it costs**: the pairs the cross-encoder (or the bi-encoder engine) will score, which the
  worker sizes its windows and backpressure by.
- **how it reads long documents** (:mod:`engines.chunking`): the job's ``max_chunks``,
  ``chunk_overlap`` and ``truncation``, else the config's; the cost then counts every chunk,
  estimated before tokenizing at :data:`CHARS_PER_TOKEN` characters a token (the scheduler counts
  the real chunks once it has them), and a job estimated beyond ``max_pairs_per_request`` is
  refused as too large (:class:`JobTooLarge`). The bi-encoder engine reads documents whole.
- **what it needs of the caller**: a ``client`` cut ranks by the caller's own scores, so every
  document needs a finite one; a job without is refused (:class:`JobRefused`), never guessed.

The worker calls it through ``Reranker.plan`` when a request arrives (a refusal is answered at
once, before the request takes room in a window) and hands the plan back to
``Reranker.rerank``, which scores by it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from engines.config import EngineConfig
from vocabulary import CLIENT, PREFILTER_METHODS, RIGHT, TRUNCATION_DIRECTIONS

#: Characters a token is taken to span when a job's chunks are counted before it is tokenized
#: (English averages 4-5 with a WordPiece or BPE vocabulary).
CHARS_PER_TOKEN = 4


@dataclass
class RerankJob:
    """One request: a query and the documents to rank for it.

    Attributes:
        query: the query text.
        documents: the candidate texts, in the caller's order (indices refer to it).
        prefilter: ``True``/``False`` forces the prefilter on/off; ``None`` applies it when there
            are more than ``prefilter_threshold`` documents.
        keep: how many documents the prefilter passes to the cross-encoder
            (``None`` = ``prefilter_keep`` of the config; 0 = the first stage's ranking alone).
        method: the prefilter's first stage, one of :data:`vocabulary.PREFILTER_METHODS`
            (``None`` = ``prefilter_method`` of the config).
        scores: the caller's own first-stage score of each document (``None`` where it has
            none); read only by the ``client`` method, which needs a finite one for every
            document of a job it cuts.
        raw_scores: ``RerankOutcome.relevance`` holds the cross-encoder's raw score (the logit,
            a margin) instead of its score through the model's activation.
        max_chunks: a document longer than the room beside the query is scored in up to this many
            chunks and takes its best chunk's score (:mod:`engines.chunking`); 1 truncates it
            (``None`` = ``max_chunks_per_doc`` of the config).
        chunk_overlap: tokens a chunk shares with the one before it (``None`` =
            ``chunk_overlap_tokens`` of the config).
        truncation: ``"right"`` keeps a long document's start, ``"left"`` its end (``None`` =
            ``truncation_direction`` of the config).
        instruction: the task instruction of a decoder reranker's prompt (``None``: the model's
            default); refused by a cross-encoder, whose input has no place for one.
    """

    query: str
    documents: list[str]
    prefilter: bool | None = None
    keep: int | None = None
    method: str | None = None
    scores: Sequence[float | None] | None = None
    raw_scores: bool = False
    max_chunks: int | None = None
    chunk_overlap: int | None = None
    truncation: str | None = None
    instruction: str | None = None


class JobRefused(ValueError):
    """A job the engine will not score as it is; the message says why, for the caller."""


class JobTooLarge(JobRefused):
    """A job that would cost more pairs than ``max_pairs_per_request`` allows."""


@dataclass(frozen=True)
class ChunkOptions:
    """How a job reads documents longer than the room beside its query (:mod:`engines.chunking`)."""

    max_chunks: int = 1
    overlap: int = 0
    truncation: str = RIGHT

    @property
    def whole(self) -> bool:
        """True when documents go to the runner whole (it truncates their end)."""
        return self.max_chunks == 1 and self.truncation == RIGHT


@dataclass(frozen=True, eq=False)
class JobPlan:
    """What the engine will do with one job (see the module's rules).

    Attributes:
        documents: how many documents the job has.
        prefilter: whether a first stage cuts it before the cross-encoder.
        method: that first stage; ``None`` when nothing is cut.
        keep: how many documents the cross-encoder (or the bi-encoder engine) scores.
        client_scores: the caller's scores as float64, for a ``client`` cut; else ``None``.
        chunking: how long documents are read.
        instruction: a decoder's task instruction, or ``None`` for its default.
        estimated_pairs: the pairs the kept documents' chunks are estimated to cost; ``None``
            when documents are read whole (one pair each).
    """

    documents: int
    prefilter: bool
    method: str | None
    keep: int
    client_scores: np.ndarray | None = None
    chunking: ChunkOptions = field(default_factory=ChunkOptions)
    instruction: str | None = None
    estimated_pairs: int | None = None

    @property
    def pairs(self) -> int:
        """The pairs the job costs the engine: what windows and backpressure count."""
        return self.keep if self.estimated_pairs is None else self.estimated_pairs


def plan_job(job: RerankJob, config: EngineConfig, cross_encoder: bool = True, document_budget: int | None = None,
             takes_instruction: bool = False) -> JobPlan:
    """The plan for ``job`` under ``config``'s defaults; ``cross_encoder`` is False for the
    bi-encoder engine; ``document_budget``: the tokens a pair holds besides its special tokens
    (for the chunk estimate); ``takes_instruction``: whether the model's input has a place for an
    instruction. Raises :class:`JobRefused` (a ``ValueError``) for a job it cannot score."""
    if not isinstance(job.query, str):
        raise JobRefused(f"query must be a string, got {type(job.query).__name__}")
    if isinstance(job.documents, str) or any(not isinstance(d, str) for d in job.documents):
        raise JobRefused("documents must be a list of strings")
    if job.instruction is not None and not takes_instruction:
        raise JobRefused("instruction is read only by decoder rerankers (Qwen3-Reranker style); this model's input "
                         "has no place for one: leave instruction out")
    n = len(job.documents)
    if not cross_encoder:
        if (job.max_chunks or 1) > 1 or (job.truncation or RIGHT) != RIGHT:
            raise JobRefused("the bi-encoder engine reads each document whole, as its embedding truncates it: "
                             "max_chunks_per_doc and truncation_direction need a cross-encoder")
        # Its cosine ranks every document: a first stage's options would be silently void.
        asked = [name for name, value in (("prefilter", job.prefilter), ("keep", job.keep), ("method", job.method))
                 if value not in (None, False)]
        if asked:
            raise JobRefused(f"the bi-encoder engine ranks every document by cosine and has no first stage: "
                             f"{', '.join(asked)} need a cross-encoder engine; leave {'it' if len(asked) == 1 else 'them'} out")
        return JobPlan(n, False, None, n)
    keep = config.prefilter_keep if job.keep is None else int(job.keep)
    if keep < 0:
        raise JobRefused(f"keep must be >= 0, got {keep}")
    method = job.method or config.prefilter_method
    if method not in PREFILTER_METHODS:
        raise JobRefused(f"unknown prefilter method {method!r}; known: {', '.join(PREFILTER_METHODS)}")
    chunking = chunk_options(job, config)
    wanted = job.prefilter if job.prefilter is not None else n > config.prefilter_threshold
    if not wanted or keep >= n:
        plan = JobPlan(n, False, None, n, chunking=chunking, instruction=job.instruction)
    else:
        plan = JobPlan(n, True, method, keep, client_scores(job) if method == CLIENT else None, chunking,
                       job.instruction)
    if chunking.whole or document_budget is None:
        return plan
    estimated = estimate_pairs(job, plan, document_budget)
    if estimated > config.max_pairs_per_request:
        raise JobTooLarge(
            f"this request would cost about {estimated} pairs ({plan.keep} documents scored in up to "
            f"{chunking.max_chunks} chunks each, counted at {CHARS_PER_TOKEN} characters a token), more than the "
            f"{config.max_pairs_per_request} a request may (max_pairs_per_request): lower max_chunks_per_doc, or "
            "prefilter to fewer documents")
    return replace(plan, estimated_pairs=estimated)


def chunk_options(job: RerankJob, config: EngineConfig) -> ChunkOptions:
    """The job's options for long documents, the config's where it gives none."""
    max_chunks = config.max_chunks_per_doc if job.max_chunks is None else int(job.max_chunks)
    overlap = config.chunk_overlap_tokens if job.chunk_overlap is None else int(job.chunk_overlap)
    truncation = job.truncation or config.truncation_direction
    if max_chunks < 1:
        raise JobRefused(f"max_chunks_per_doc must be >= 1, got {max_chunks}")
    if overlap < 0:
        raise JobRefused(f"chunk_overlap_tokens must be >= 0, got {overlap}")
    if truncation not in TRUNCATION_DIRECTIONS:
        raise JobRefused(f"truncation_direction must be one of {', '.join(TRUNCATION_DIRECTIONS)}, got {truncation!r}")
    return ChunkOptions(max_chunks, overlap, truncation)


def estimate_pairs(job: RerankJob, plan: JobPlan, document_budget: int) -> int:
    """The pairs the documents the cross-encoder may read cost in chunks, counted at
    :data:`CHARS_PER_TOKEN` characters a token; for a cut job, the ``keep`` costliest documents."""
    options = plan.chunking
    room = max(document_budget // 2, document_budget - math.ceil(len(job.query) / CHARS_PER_TOKEN))
    step = max(1, room - min(options.overlap, room // 2))
    chunks = []
    for text in job.documents:
        tokens = math.ceil(len(text) / CHARS_PER_TOKEN)
        chunks.append(1 if tokens <= room else min(options.max_chunks, 1 + math.ceil((tokens - room) / step)))
    if plan.prefilter:
        chunks = sorted(chunks, reverse=True)[: plan.keep]
    return sum(chunks)


def client_scores(job: RerankJob) -> np.ndarray:
    """The caller's scores of a job the ``client`` method cuts, as float64; refused unless every
    document has a finite one."""
    n = len(job.documents)
    if job.scores is not None and len(job.scores) != n:
        raise JobRefused(f"{len(job.scores)} scores for {n} documents")
    scores = np.full(n, np.nan) if job.scores is None else np.array(
        [np.nan if s is None else float(s) for s in job.scores], dtype=np.float64)
    missing = np.flatnonzero(~np.isfinite(scores))
    if len(missing):
        shown = ", ".join(f"documents[{i}]" for i in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise JobRefused(
            f"prefilter method 'client' ranks documents by the caller's own scores, but {shown}{more} "
            f"{'has' if len(missing) == 1 else 'have'} none: give every document a finite score, "
            "or choose another prefilter method")
    return scores
