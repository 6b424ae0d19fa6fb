"""What the worker sends back, keyed by request_id: a ranking or an error.

These models are built by our own code (engines hand over numpy scalars, which lax
validation converts), so they are not strict; they do forbid unknown fields so that a
misspelt keyword fails in a test instead of silently vanishing from the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.request import REQUEST_ID_MAX_CHARS
from vocabulary import CROSS_ENCODER_STAGE, PREFILTER_STAGE, Stage

__all__ = [
    "BestChunk",
    "DocumentText",
    "ErrorCode",
    "ErrorDetail",
    "ErrorResponse",
    "RankedResult",
    "ResponseMeta",
    "RerankResponse",
    "Stage",
    "rank_results",
]

# Serialization-mode JSON Schemas (what clients receive) should list a field with a default
# as required: it is always present on the wire.
_RESPONSE_CONFIG = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

_STAGE_ORDER: dict[str, int] = {CROSS_ENCODER_STAGE: 0, PREFILTER_STAGE: 1}


class ErrorCode(str, Enum):
    """Why a request got no ranking.

    invalid_request: not UTF-8, not JSON, or not a valid request; too_large: more
    documents, or longer texts, than the worker accepts; unknown_model: a model the
    worker does not serve; deadline_exceeded: deadline_ms passed before the worker could
    answer; internal: the worker failed.
    """

    INVALID_REQUEST = "invalid_request"
    TOO_LARGE = "too_large"
    UNKNOWN_MODEL = "unknown_model"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


class DocumentText(BaseModel):
    """A document's text, echoed in its result when the request set return_documents."""

    model_config = _RESPONSE_CONFIG

    text: str


class BestChunk(BaseModel):
    """For a document scored in parts (chunks, or the end that left truncation keeps): the
    part that gave it its score."""

    model_config = _RESPONSE_CONFIG

    index: int = Field(ge=0, description="The part's position among the document's parts, from 0.")
    start: int = Field(
        ge=0, description="Where the part starts in the document's scored text, in characters."
    )
    end: int = Field(
        ge=0,
        description="Where it ends (exclusive): text[start:end] is the part. The scored text is the "
        "document's text, or with rank_fields its named fields joined.",
    )
    chunks: int = Field(ge=1, description="How many parts of the document were scored.")

    @model_validator(mode="after")
    def _a_span_among_the_parts(self) -> BestChunk:
        if self.end < self.start:
            raise ValueError(f"chunk end {self.end} is before its start {self.start}")
        if self.index >= self.chunks:
            raise ValueError(f"chunk index {self.index} is not among its {self.chunks} chunks")
        return self


def _never_null(schema: dict[str, Any]) -> None:
    # The model takes None to mean "not there" and then leaves the key out, so on the wire
    # the field is an object or absent, never null.
    branches = [s for s in schema.pop("anyOf") if s.get("type") != "null"]
    schema.pop("default", None)
    schema.update(branches[0] if len(branches) == 1 else {"anyOf": branches})


class RankedResult(BaseModel):
    """One ranked document."""

    model_config = _RESPONSE_CONFIG

    index: int = Field(ge=0, description="Position of the document in the request's documents.")
    id: str | None = Field(description="The document's id if the request gave one, else null.")
    relevance_score: float = Field(
        allow_inf_nan=False,
        description="stage cross_encoder: the cross-encoder's score through the model's own "
        "activation (a sigmoid unless its config names another; the raw score with raw_scores); "
        "stage prefilter: the prefilter's own score (by its method: cosine "
        "similarity for static and bi-encoder, BM25 score for bm25, the document's score for "
        "client, reciprocal-rank-fusion score for static+bm25).",
    )
    stage: Stage = Field(
        default=CROSS_ENCODER_STAGE,
        description="Which model produced relevance_score: cross_encoder, or prefilter for "
        "documents the prefilter cut and the cross-encoder never scored.",
    )
    document: DocumentText | dict[str, Any] | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        json_schema_extra=_never_null,
        description="Present only when the request set return_documents: {text} for a document "
        "given as a string or {id, text, score}; with rank_fields, the object as sent.",
    )
    chunk: BestChunk | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        json_schema_extra=_never_null,
        description="Present only for a document scored in parts (max_chunks_per_doc above 1, "
        "or left truncation): the part that gave it its score.",
    )

    def ranking_key(self) -> tuple[int, float, int]:
        """Sort key of the response order: cross-encoder results before prefilter ones
        (their scores are on different scales), then relevance_score descending, then
        index ascending."""
        return (_STAGE_ORDER[self.stage], -self.relevance_score, self.index)


def rank_results(results: Iterable[RankedResult], top_n: int | None = None) -> list[RankedResult]:
    """Put results in response order (see ``RankedResult.ranking_key``) and keep the best
    ``top_n`` (all when None)."""
    ranked = sorted(results, key=RankedResult.ranking_key)
    return ranked if top_n is None else ranked[:top_n]


class ResponseMeta(BaseModel):
    """How the request was served."""

    model_config = _RESPONSE_CONFIG

    documents: int = Field(ge=0, description="Number of documents in the request.")
    scored_by_cross_encoder: int = Field(
        ge=0, description="How many of them the cross-encoder scored."
    )
    pairs_scored: int = Field(
        ge=0,
        description="The (query, text) pairs the cross-encoder scored, chunks counted one by one.",
    )
    prefiltered: bool = Field(description="Whether the prefilter cut the request.")
    queue_ms: float = Field(ge=0, allow_inf_nan=False, description="Time waiting for a batch.")
    inference_ms: float = Field(ge=0, allow_inf_nan=False, description="Time in the models.")
    total_ms: float = Field(
        ge=0, allow_inf_nan=False, description="Time from receiving the request to answering."
    )
    worker: str = Field(description="Which worker answered.")


class RerankResponse(BaseModel):
    """A successful ranking.

    results are in this order: stage (cross_encoder before prefilter: documents a
    prefilter cut come after every document the cross-encoder scored), then
    relevance_score descending, then index ascending; top_n is applied to that order.
    Each index appears at most once.
    """

    # Build `results` in that order (the worker takes the engine's `RerankOutcome.order`;
    # rank_results() sorts any list); the validator below refuses any other order.

    model_config = _RESPONSE_CONFIG

    request_id: str = Field(min_length=1, max_length=REQUEST_ID_MAX_CHARS)
    status: Literal["ok"] = "ok"
    model: str = Field(description="The cross-encoder that scored the documents.")
    engine: str = Field(description="The inference engine that ran it.")
    results: list[RankedResult]
    meta: ResponseMeta

    @model_validator(mode="after")
    def _results_follow_the_contract(self) -> RerankResponse:
        # Checked rather than silently sorted: an out-of-order list means a bug upstream
        # (top_n applied before sorting, say), and sorting here would hide it.
        keys = [r.ranking_key() for r in self.results]
        for position, (before, after) in enumerate(pairwise(keys), start=1):
            if after < before:
                raise ValueError(
                    f"results[{position}] is out of order: results must be sorted by stage "
                    "(cross_encoder first), relevance_score descending, index ascending"
                )
        indices = [r.index for r in self.results]
        if len(set(indices)) != len(indices):
            raise ValueError("results list a document index more than once")
        if indices and max(indices) >= self.meta.documents:
            raise ValueError(
                f"results refer to index {max(indices)} but the request had "
                f"{self.meta.documents} documents (meta.documents)"
            )
        return self


class ErrorDetail(BaseModel):
    """What went wrong, for people: the message names the field and the limit."""

    model_config = _RESPONSE_CONFIG

    code: ErrorCode
    message: str


class ErrorResponse(BaseModel):
    """A request that got no ranking. request_id is null when the message was too broken
    to read one from (not UTF-8, not JSON, not an object, or no valid request_id)."""

    model_config = _RESPONSE_CONFIG

    request_id: Annotated[str, Field(min_length=1, max_length=REQUEST_ID_MAX_CHARS)] | None
    status: Literal["error"] = "error"
    error: ErrorDetail
