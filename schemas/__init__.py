"""The wire contract of the rerank service: request, response and error messages.

Messages are UTF-8 JSON (field names follow the Cohere rerank API). A client puts a
``RerankRequest`` on the request topic; the worker answers, keyed by ``request_id``, with a
``RerankResponse`` (``status: "ok"``) or an ``ErrorResponse`` (``status: "error"``).

Result order (``RerankResponse.results``): stage first (``cross_encoder`` before
``prefilter``: documents a prefilter cut are ranked after every document the cross-encoder
scored, by their first-stage score, which is also their relevance_score), then
relevance_score descending, then index ascending; top_n applied last.

This package knows nothing of Kafka or of the engines: it is pydantic models plus
``parse_request`` (bytes -> validated request, or a ``RequestError`` carrying the error
code and a message that names the field and the limit) and ``encode`` (model -> bytes).
``python -m schemas.export`` writes the JSON Schemas of the three messages to
``schemas/json/``.
"""

from schemas.parsing import RequestError, RequestLimits, encode, parse_request, parse_response
from schemas.request import Document, FieldedDocument, PrefilterOptions, RerankRequest
from schemas.response import (
    BestChunk,
    DocumentText,
    ErrorCode,
    ErrorDetail,
    ErrorResponse,
    RankedResult,
    ResponseMeta,
    RerankResponse,
    Stage,
    rank_results,
)

__all__ = [
    "BestChunk",
    "Document",
    "DocumentText",
    "ErrorCode",
    "ErrorDetail",
    "ErrorResponse",
    "FieldedDocument",
    "PrefilterOptions",
    "RankedResult",
    "RequestError",
    "RequestLimits",
    "RerankRequest",
    "RerankResponse",
    "ResponseMeta",
    "Stage",
    "encode",
    "parse_request",
    "parse_response",
    "rank_results",
]
