"""Every message the worker writes: ranked answers, error answers and dead letters.

The one place that builds them, so that each request's answer (ranked or error) has one
shape whatever path produced it: the intake's refusals, a passed deadline, a window the
engine failed on, a reply_to topic that refused the answer, an answer too large for its
topic. The ranking itself is the engine's (``RerankOutcome.order`` and ``relevance``):
here it is only formatted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from engines import RerankOutcome
from schemas import (
    BestChunk,
    DocumentText,
    ErrorCode,
    FieldedDocument,
    RankedResult,
    RequestError,
    RerankRequest,
    RerankResponse,
    ResponseMeta,
    encode,
)

#: Outbound.status of a message that settles its request with a ranking or with an error.
OK, ERROR = "ok", "error"


@dataclass
class Outbound:
    """One message to produce; the request is acked when every Outbound of it is delivered."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None
    fallback: Outbound | None = None  # sent instead when this one cannot be delivered
    request_id: str | None = None  # set on answers: an oversized one is replaced by an error
    # What delivering this message settles, for rerank_requests_total / rerank_errors_total:
    # OK or ERROR (with the error code) for an answer, None for a dead letter that goes
    # with an answer.
    status: str | None = None
    code: str | None = None

    def size(self) -> int:
        """Upper bound of the record's size on the wire (what the broker compares with
        max.message.bytes)."""
        return DefaultRecordBatchBuilder.estimate_size_in_bytes(self.key, self.value, self.headers or [])


@dataclass(frozen=True)
class Timing:
    """How long a request took, in milliseconds, for its answer's ``meta``."""

    queue_ms: float
    inference_ms: float
    total_ms: float


def key_as_request_id(key: bytes | None) -> str | None:
    """The record key, when it can stand in for an unreadable body's request_id."""
    if not key:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if 1 <= len(text) <= 128 else None


def ranked_response(request: RerankRequest, outcome: RerankOutcome, *, model: str, engine: str,
                    worker: str, timing: Timing) -> RerankResponse:
    """The engine's ranking as the contract words it: ``outcome.order`` is already the
    response order, so top_n is a slice."""
    echoes = document_echoes(request) if request.return_documents else None
    ids = request.ids()
    order = outcome.order if request.top_n is None else outcome.order[: request.top_n]
    stages = outcome.stages
    results = [
        RankedResult(
            index=i,
            id=ids[i],
            relevance_score=float(outcome.relevance[i]),
            stage=stages[i],
            document=echoes[i] if echoes is not None else None,
            chunk=chunk_of(outcome, i),
        )
        for i in (int(k) for k in order)
    ]
    return RerankResponse(
        request_id=request.request_id,
        model=model,
        engine=engine,
        results=results,
        meta=ResponseMeta(
            documents=len(ids),
            scored_by_cross_encoder=int(outcome.cross_encoder_scored),
            pairs_scored=int(outcome.pairs_scored),
            prefiltered=bool(outcome.prefiltered),
            queue_ms=round(timing.queue_ms, 3),
            inference_ms=round(timing.inference_ms, 3),
            total_ms=round(timing.total_ms, 3),
            worker=worker,
        ),
    )


def document_echoes(request: RerankRequest) -> list[DocumentText | dict[str, Any]]:
    """What return_documents echoes of each document: with rank_fields the object as sent,
    else its text."""
    return [document.as_sent() if isinstance(document, FieldedDocument) else DocumentText(text=text)
            for document, text in zip(request.documents, request.texts())]


def chunk_of(outcome: RerankOutcome, index: int) -> BestChunk | None:
    """The part that gave document ``index`` its score, when the engine scored it in parts."""
    best = outcome.best_chunks.get(index)
    if best is None:
        return None
    return BestChunk(index=best.index, start=best.start, end=best.end, chunks=best.chunks)


class Answers:
    """Builds the worker's messages for its topics and its name."""

    def __init__(self, *, request_topic: str, response_topic: str, dead_letter_topic: str,
                 worker: str, model: str, engine: str) -> None:
        self.request_topic = request_topic
        self.response_topic = response_topic
        self.dead_letter_topic = dead_letter_topic
        self.worker = worker
        self.model = model
        self.engine = engine

    def ranked(self, request: RerankRequest, outcome: RerankOutcome, timing: Timing) -> Outbound:
        response = ranked_response(request, outcome, model=request.model or self.model, engine=self.engine,
                                   worker=self.worker, timing=timing)
        return self._answer(request.request_id, encode(response), OK, None, request.reply_to)

    def error(self, err: RequestError, reply_to: str | None = None) -> Outbound:
        """The error answer to a request whose request_id is known."""
        assert err.request_id is not None, "an error answer needs a request_id to be keyed by"
        return self._answer(err.request_id, encode(err.to_response()), ERROR, err.code.value, reply_to)

    def deadline_exceeded(self, request: RerankRequest, now_ms: float) -> Outbound:
        return self.error(RequestError(
            ErrorCode.DEADLINE_EXCEEDED,
            f"deadline_ms {request.deadline_ms} passed {now_ms - request.deadline_ms:.0f} ms "
            "before the engine began on the request; it was not scored", request.request_id), request.reply_to)

    def scoring_failed(self, request: RerankRequest, failure: BaseException) -> Outbound:
        return self.error(RequestError(
            ErrorCode.INTERNAL, f"the engine failed while scoring this request: "
            f"{type(failure).__name__}: {failure}", request.request_id), request.reply_to)

    def rejection(self, err: RequestError, raw: bytes, key: bytes | None) -> list[Outbound]:
        """What answers a message the intake refused: its error answer; for an unreadable
        body, first a dead letter with the original bytes (for a person to look at), and the
        answer only if the record key can serve as its request_id."""
        if err.request_id is not None:
            return [self.error(err)]
        dead_letter = Outbound(self.dead_letter_topic, key, raw, [
            ("error-code", err.code.value.encode()),
            ("error-message", err.message.encode("utf-8", "replace")),
            ("source-topic", self.request_topic.encode()),
            ("worker", self.worker.encode()),
        ])
        request_id = key_as_request_id(key)
        if request_id is None:
            dead_letter.status, dead_letter.code = ERROR, err.code.value  # the dead letter settles it
            return [dead_letter]
        return [dead_letter, self.error(RequestError(err.code, err.message, request_id))]

    def too_large_instead(self, message: Outbound, size: int, limit: int) -> Outbound:
        """What replaces a message its topic would refuse as too large: a too_large error
        answer for an answer, the headers without the body for a dead letter."""
        if message.request_id is None:
            return Outbound(message.topic, message.key, b"", [
                *(message.headers or []), ("original-bytes", str(len(message.value)).encode())],
                status=message.status, code=message.code)
        err = RequestError(
            ErrorCode.TOO_LARGE,
            f"the answer is {size} bytes, more than topic {message.topic!r} accepts ({limit} bytes, "
            "max.message.bytes); ask for fewer results (top_n) or without return_documents",
            message.request_id)
        return Outbound(message.topic, message.key, encode(err.to_response()), request_id=message.request_id,
                        fallback=message.fallback, status=ERROR, code=ErrorCode.TOO_LARGE.value)

    def _answer(self, request_id: str, value: bytes, status: str, code: str | None,
                reply_to: str | None) -> Outbound:
        key = request_id.encode("utf-8")
        if reply_to is None:
            return Outbound(self.response_topic, key, value, request_id=request_id, status=status, code=code)
        # If the reply topic cannot take it (missing, no ACL), the client still gets an answer.
        refused = RequestError(ErrorCode.INVALID_REQUEST,
                               f"reply_to topic {reply_to!r} does not exist or refused the answer", request_id)
        return Outbound(reply_to, key, value, request_id=request_id, status=status, code=code,
                        fallback=self._answer(request_id, encode(refused.to_response()), ERROR,
                                              ErrorCode.INVALID_REQUEST.value, None))


__all__ = ["ERROR", "OK", "Answers", "Outbound", "Timing", "chunk_of", "document_echoes", "key_as_request_id",
           "ranked_response"]
