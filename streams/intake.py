"""Intake: one Kafka message in, a request ready for a window out, or a refusal.

What it checks, in order, each refusal a ``RequestError`` with its code:

1. the contract and the operator's size limits (``schemas.parse_request``: invalid_request,
   too_large, unknown_model);
2. ``reply_to``: only topics under ``RERANK_REPLY_TO_PREFIX``, never the request or
   dead-letter topic (invalid_request);
3. the engine's request policy (``Reranker.plan``): whether it will prefilter, how, and the
   pairs it will cost; a job it would refuse (a ``client`` prefilter without a score on
   every document, an instruction for a cross-encoder) is refused here, before it takes room
   in a window: invalid_request, or too_large for one that would cost more pairs than
   ``RERANK_MAX_PAIRS_PER_REQUEST``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from engines import JobPlan, JobRefused, JobTooLarge, Reranker, RerankJob
from schemas import ErrorCode, RequestError, RequestLimits, RerankRequest, parse_request


@dataclass
class Inbound:
    """A request the intake accepted, waiting for its window."""

    request: RerankRequest
    job: RerankJob
    plan: JobPlan
    event: Any  # the Kafka event to ack once the answer is delivered
    received: float = field(default_factory=time.monotonic)

    @property
    def pairs(self) -> int:
        """What the request costs the engine, for windows and backpressure."""
        return self.plan.pairs


def job_of(request: RerankRequest) -> RerankJob:
    """The engine's job for a request: its texts and the options the engine reads."""
    options = request.prefilter
    return RerankJob(request.query, request.texts(),
                     prefilter=options.enabled if options else None,
                     keep=options.keep if options else None,
                     method=options.method if options else None,
                     scores=request.scores(), raw_scores=request.raw_scores,
                     max_chunks=request.max_chunks_per_doc, chunk_overlap=request.chunk_overlap_tokens,
                     truncation=request.truncation_direction, instruction=request.instruction)


class Intake:
    """Turns message values into accepted requests, for one worker's limits and engine."""

    def __init__(self, reranker: Reranker, limits: RequestLimits, served_models: set[str], *,
                 reply_to_prefix: str, forbidden_reply_topics: tuple[str, ...]) -> None:
        self.reranker = reranker
        self.limits = limits
        self.served_models = served_models
        self.reply_to_prefix = reply_to_prefix
        self.forbidden_reply_topics = forbidden_reply_topics

    def read(self, raw: bytes, event: Any) -> Inbound:
        """The accepted request; raises ``RequestError`` (with the request_id when one could be
        read) for anything the worker will not score."""
        request = parse_request(raw, self.limits, self.served_models)
        self.check_reply_to(request)
        job = job_of(request)
        try:
            plan = self.reranker.plan(job)
        except JobTooLarge as refused:
            raise RequestError(ErrorCode.TOO_LARGE, str(refused), request.request_id) from None
        except JobRefused as refused:
            raise RequestError(ErrorCode.INVALID_REQUEST, str(refused), request.request_id) from None
        return Inbound(request, job, plan, event)

    def check_reply_to(self, request: RerankRequest) -> None:
        topic, prefix = request.reply_to, self.reply_to_prefix
        if topic is None:
            return
        if not prefix or not topic.startswith(prefix) or topic in self.forbidden_reply_topics:
            raise RequestError(
                ErrorCode.INVALID_REQUEST,
                f"reply_to {topic!r} is not allowed: reply topics must start with {prefix!r} "
                f"(RERANK_REPLY_TO_PREFIX)" if prefix else "reply_to is disabled on this worker",
                request.request_id)
