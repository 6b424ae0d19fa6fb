"""The worker's parts without a broker: intake, answers, scoring, the service's way from a
message to its acked answer, and the drain on shutdown.

The real-broker tests (test_worker.py, test_faults.py, test_shutdown.py) show the same end to
end through Kafka and faust; here each part is checked on its own, with the stand-ins of
fakes.py (a producer, an admin client, events, faust's app, an engine scoring by length).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time

import numpy as np
import pytest
from fakes import FakeAdmin, FakeApp, FakeEvent, FakeProducer, FakeStream, LengthReranker

from engines import JobPlan, JobRefused, JobTooLarge, RerankJob
from engines.outcome import BestChunk
from schemas import BestChunk as SchemaBestChunk
from schemas import DocumentText, ErrorCode, RequestError, RequestLimits, encode, parse_request, parse_response
from streams.answers import Answers, Timing
from streams.intake import Inbound, Intake, job_of
from streams.lifecycle import Drain
from streams.scoring import Scorer
from streams.service import RerankService
from streams.settings import WorkerSettings
from streams.topic_metadata import TopicMetadata
from streams.inbox import Inbox, Pending

ANSWERS = Answers(request_topic="req", response_topic="resp", dead_letter_topic="dlq", worker="w1",
                  model="fake-model", engine="fake-fp32")
TIMING = Timing(queue_ms=1.0, inference_ms=2.0, total_ms=3.0)


def request(request_id: str = "r1", documents=("aa", "a", "aaaa"), **fields) -> bytes:
    return json.dumps({"request_id": request_id, "query": "q", "documents": list(documents), **fields}).encode()


def intake(reranker=None, max_documents: int = 100) -> Intake:
    return Intake(reranker or LengthReranker(), RequestLimits(max_documents=max_documents), {"fake-model"},
                  reply_to_prefix="rerank-replies.", forbidden_reply_topics=("req", "dlq"))


def refusal(raw: bytes, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as caught:
        intake(**kwargs).read(raw, event=None)
    return caught.value


# -- intake ---------------------------------------------------------------------------------------
def test_intake_costs_a_request_by_the_engines_plan():
    small = intake().read(request(documents=["a", "bb"]), event="e1")
    assert small.pairs == 2 and not small.plan.prefilter and small.event == "e1"
    large = intake().read(request(documents=["x" * k for k in range(1, 11)]), event="e2")
    assert large.pairs == 3 and large.plan.prefilter  # cut to the engine's keep
    asked = intake().read(request(documents=["a"] * 10, prefilter={"enabled": False}), event="e3")
    assert asked.pairs == 10 and asked.job.prefilter is False


def test_intake_passes_the_requests_options_to_the_engines_job():
    raw = request(documents=[{"text": "a", "score": 1.5}, "bb"], raw_scores=True,
                  prefilter={"enabled": True, "keep": 1, "method": "client"})
    job = job_of(parse_request(raw))
    assert job == RerankJob("q", ["a", "bb"], prefilter=True, keep=1, method="client", scores=[1.5, None],
                            raw_scores=True)


def test_intake_passes_chunking_truncation_and_instruction_and_the_joined_rank_fields_to_the_job():
    raw = request(documents=[{"id": "k", "title": "Kafka", "text": "A log.", "year": 2011}], rank_fields=["title", "text"],
                  max_chunks_per_doc=4, chunk_overlap_tokens=0, truncation_direction="left", instruction="Find answers")
    job = intake().read(raw, None).job
    assert job == RerankJob("q", ["title: Kafka\ntext: A log."], scores=[None], max_chunks=4, chunk_overlap=0,
                            truncation="left", instruction="Find answers")
    unset = job_of(parse_request(request()))
    assert (unset.max_chunks, unset.chunk_overlap, unset.truncation, unset.instruction) == (None, None, None, None)


class RefusingReranker(LengthReranker):
    """Plans by refusing every job with ``refusal``."""

    def __init__(self, refusal: Exception) -> None:
        super().__init__()
        self.refusal = refusal

    def plan(self, job: RerankJob) -> JobPlan:
        raise self.refusal


@pytest.mark.parametrize("refused, code", [
    (JobTooLarge("the request would cost 30000 pairs; the limit is 20000 (RERANK_MAX_PAIRS_PER_REQUEST)"),
     ErrorCode.TOO_LARGE),
    (JobRefused("an instruction needs a decoder reranker"), ErrorCode.INVALID_REQUEST),
])
def test_intake_answers_a_job_too_large_for_the_engine_too_large_and_other_refusals_invalid(refused, code):
    err = refusal(request(), reranker=RefusingReranker(refused))
    assert (err.code, err.message, err.request_id) == (code, str(refused), "r1")


@pytest.mark.parametrize("raw, code, words", [
    (b"not json", ErrorCode.INVALID_REQUEST, "JSON"),
    (request(documents=["a"] * 101), ErrorCode.TOO_LARGE, "101"),
    (request(model="another-model"), ErrorCode.UNKNOWN_MODEL, "another-model"),
    (request(reply_to="elsewhere"), ErrorCode.INVALID_REQUEST, "must start with 'rerank-replies.'"),
    (request(reply_to="dlq"), ErrorCode.INVALID_REQUEST, "is not allowed"),
    (request(documents=[{"text": "a", "score": 1.0}, "b", "c"], prefilter={"method": "client", "enabled": True, "keep": 1}),
     ErrorCode.INVALID_REQUEST, "documents[1], documents[2] have none"),
])
def test_intake_refuses_what_the_worker_will_not_score_with_a_code(raw, code, words):
    err = refusal(raw)
    assert err.code == code and words in err.message
    assert err.request_id == (None if raw == b"not json" else "r1")


# -- answers --------------------------------------------------------------------------------------
def ranked(raw: bytes, reranker=None):
    inbound = intake(reranker).read(raw, None)
    (outcome,) = (reranker or LengthReranker()).rerank([inbound.job], [inbound.plan])
    message = ANSWERS.ranked(inbound.request, outcome, TIMING)
    return message, parse_response(message.value)


def test_a_ranked_answer_takes_the_engines_order_and_relevance_as_they_are():
    message, response = ranked(request(documents=["aa", "a", "aaaa", {"id": "d3", "text": "aaa"}]))
    assert (message.topic, message.key, message.status) == ("resp", b"r1", "ok")
    assert [r.index for r in response.results] == [2, 3, 0, 1]
    assert response.results[0].relevance_score == pytest.approx(1 / (1 + np.exp(-4)))
    assert response.results[1].id == "d3" and response.meta.documents == 4 and response.meta.worker == "w1"
    assert response.meta.total_ms == 3.0 and response.engine == "fake-fp32" and response.model == "fake-model"


def test_a_ranked_answer_cuts_at_top_n_returns_documents_and_raw_scores_when_asked():
    _, response = ranked(request(documents=["aa", "a", "aaaa"], top_n=2, return_documents=True, raw_scores=True))
    assert [(r.index, r.relevance_score, r.document.text) for r in response.results] == [(2, 4.0, "aaaa"), (0, 2.0, "aa")]


def test_a_ranked_answer_carries_the_best_chunk_of_a_document_scored_in_parts_and_the_pairs_scored():
    inbound = intake().read(request(documents=["aa", "a", "aaaa"]), None)
    (outcome,) = LengthReranker().rerank([inbound.job], [inbound.plan])
    # as an engine that chunks would fill them: document 2 in 3 chunks, the second the best
    outcome = dataclasses.replace(outcome, best_chunks={2: BestChunk(index=1, start=1, end=3, chunks=3)}, pairs_scored=5)
    response = parse_response(ANSWERS.ranked(inbound.request, outcome, TIMING).value)
    assert [(r.index, r.chunk) for r in response.results] == [
        (2, SchemaBestChunk(index=1, start=1, end=3, chunks=3)), (0, None), (1, None)]
    assert response.meta.pairs_scored == 5
    assert b'"chunk"' not in encode(response.model_copy(update={"results": response.results[1:]}))


def test_a_returned_structured_document_is_the_object_as_sent_and_a_plain_one_its_text():
    sent = [{"id": "k", "title": "Kafka", "text": "A log.", "tags": ["a", None]}, {"title": "Faust", "text": "Streams."}]
    _, response = ranked(request(documents=sent, rank_fields=["title", "text"], return_documents=True))
    assert {r.index: r.document for r in response.results} == {0: sent[0], 1: sent[1]}
    assert response.results[1].id == "k"
    _, plain = ranked(request(documents=["aa", {"id": "x", "text": "a"}], return_documents=True))
    assert [r.document for r in plain.results] == [DocumentText(text="aa"), DocumentText(text="a")]


def test_a_prefiltered_answer_ranks_the_cut_documents_last_by_their_first_stage_score():
    _, response = ranked(request(documents=["x" * k for k in (5, 1, 9, 3, 7, 2)]))
    assert [r.stage for r in response.results] == ["cross_encoder"] * 3 + ["prefilter"] * 3
    assert [r.index for r in response.results] == [2, 4, 0, 3, 5, 1]
    assert response.meta.prefiltered and response.meta.scored_by_cross_encoder == 3


def test_error_answers_go_to_the_reply_topic_with_the_response_topic_behind():
    message = ANSWERS.error(RequestError(ErrorCode.INTERNAL, "boom", "r9"), reply_to="rerank-replies.a")
    assert message.topic == "rerank-replies.a" and message.fallback.topic == "resp" and message.code == "internal"
    assert json.loads(message.fallback.value)["error"]["code"] == "invalid_request"


# -- scoring --------------------------------------------------------------------------------------
def pending(raw: bytes, event=None, reranker=None) -> Pending[Inbound]:
    inbound = intake(reranker).read(raw, event)
    return Pending(inbound, inbound.pairs)


def codes(answered) -> list[str]:
    return [json.loads(outbound.value).get("error", {}).get("code", "ok") for _, outbound in answered]


def score_all(reranker, requests: list[Pending[Inbound]]) -> list:
    """Every request through a Scorer; the answers in the order they came out."""
    async def scenario():
        inbox: Inbox[Inbound] = Inbox(10_000)
        for p in requests:
            await inbox.put(p.item, p.pairs)
        await inbox.close()
        answered = []
        await asyncio.wait_for(Scorer(reranker, ANSWERS).run(inbox, lambda p, o: answered.append((p, o))), 30)
        return answered
    return asyncio.run(scenario())


def test_each_request_is_answered_and_a_passed_deadline_is_not_scored():
    reranker = LengthReranker()
    answered = score_all(reranker, [pending(request("a")), pending(request("b", deadline_ms=int(time.time() * 1000) - 1000)),
                                    pending(request("c"))])
    by_id = {p.item.request.request_id: code for (p, _), code in zip(answered, codes(answered))}
    assert by_id == {"a": "ok", "b": "deadline_exceeded", "c": "ok"}
    assert sorted(q for call in reranker.calls for q in call) == ["q", "q"]  # "b" never reached the engine
    ranked_a = next(parse_response(o.value) for p, o in answered if p.item.request.request_id == "a")
    assert ranked_a.meta.queue_ms >= 0 and ranked_a.meta.total_ms >= ranked_a.meta.inference_ms


def test_a_request_of_higher_priority_is_answered_first():
    answered = score_all(LengthReranker(), [pending(request("low")), pending(request("high", priority=3)),
                                            pending(request("default-too"))])
    assert [p.item.request.request_id for p, _ in answered] == ["high", "low", "default-too"]


def test_requests_that_arrive_while_the_engine_steps_are_each_answered_once_and_the_scorer_ends_when_closed():
    async def scenario():
        inbox: Inbox[Inbound] = Inbox(10_000)
        answered = []
        run = asyncio.create_task(Scorer(LengthReranker(), ANSWERS).run(
            inbox, lambda p, o: answered.append(p.item.request.request_id)))
        for k in range(30):
            p = pending(request(f"r{k}", documents=["a" * (1 + k % 7)] * (1 + k % 4)))
            await inbox.put(p.item, p.pairs)
            await asyncio.sleep(0.002 * (k % 3))
        await inbox.close()
        await asyncio.wait_for(run, 30)
        return answered
    answered = asyncio.run(scenario())
    assert sorted(answered) == sorted(f"r{k}" for k in range(30))


def test_an_engine_failure_answers_its_requests_internal():
    answered = score_all(LengthReranker(fail=True), [pending(request("a")), pending(request("b"))])
    assert codes(answered) == ["internal", "internal"]
    assert "RuntimeError: the engine broke" in json.loads(answered[0][1].value)["error"]["message"]


# -- the service: message in, answer out, then ack --------------------------------------------------
def settings(**overrides) -> WorkerSettings:
    return WorkerSettings(request_topic="req", response_topic="resp", dead_letter_topic="dlq", worker_name="w1",
                          max_inflight_pairs=64, **overrides)


def service_with(reranker, producer: FakeProducer, app: FakeApp | None = None) -> RerankService:
    metadata = TopicMetadata(lambda: FakeAdmin({"req", "resp", "dlq"}), producer_limit=1_000_000)
    return RerankService(app or FakeApp(producer), settings(), reranker, metadata=metadata)


def test_each_message_is_answered_once_and_acked_only_after_its_answer_is_sent():
    async def scenario():
        producer = FakeProducer()
        service = service_with(LengthReranker(), producer)
        engine = asyncio.create_task(service.run_engine())
        stream, log = FakeStream(), producer.events
        messages = [FakeEvent(request("good-1"), b"good-1", log), FakeEvent(b"{broken", b"key-2", log),
                    FakeEvent(request("good-3", documents=["a"] * 8), b"good-3", log), FakeEvent(None, None, log)]
        for event in messages:
            await service.take(stream, event)
        await service.inbox.close()
        await engine
        await service.delivery.wait()
        return producer, service

    producer, service = asyncio.run(scenario())
    answers = {key: parse_response(value) for topic, key, value, _ in producer.sent if topic == "resp"}
    assert answers[b"good-1"].status == "ok" and answers[b"good-3"].meta.scored_by_cross_encoder == 3
    assert answers[b"key-2"].error.code == ErrorCode.INVALID_REQUEST
    assert [t for t, *_ in producer.sent].count("dlq") == 2  # the unreadable bodies, kept for a person
    events = producer.events
    for key in (b"good-1", b"key-2", b"good-3", None):  # every message acked, each after its answer
        assert events.count(f"ack {key!r}") == 1
        assert events.index(f"ack {key!r}") > events.index(f"sent resp {key!r}" if key else "sent dlq None")
    assert service.inbox.inflight_pairs == 0  # every pair taken was given back


def test_an_answer_that_cannot_be_delivered_crashes_the_worker_unacked():
    async def scenario():
        producer = FakeProducer(refusing=frozenset({"resp"}))
        app = FakeApp(producer)
        service = service_with(LengthReranker(), producer, app)
        service.delivery.backoff_s = 0.0
        engine = asyncio.create_task(service.run_engine())
        await service.take(FakeStream(), FakeEvent(request("lost"), b"lost", producer.events))
        await service.inbox.close()
        await engine
        await service.delivery.wait()
        return producer, app

    producer, app = asyncio.run(scenario())
    assert app.crashed and not any(e.startswith("ack") for e in producer.events)


# -- drain ------------------------------------------------------------------------------------------
def test_drain_answers_what_was_taken_within_the_grace_then_commits():
    async def scenario():
        producer = FakeProducer()
        app = FakeApp(producer)
        service = service_with(LengthReranker(), producer, app)
        engine = asyncio.create_task(service.run_engine())
        await service.take(FakeStream(), FakeEvent(request("in-time"), b"in-time", producer.events))
        started = time.monotonic()
        await service.drain(grace_s=10.0)
        return producer, app, service, time.monotonic() - started, engine

    producer, app, service, took, engine = asyncio.run(scenario())
    assert "ack b'in-time'" in producer.events and took < 5.0 and engine.done()
    assert app.calls[:4] == ["stop_flow", "suspend", "pause ['tp-0']", "clear"] and app.calls[-1] == "commit"
    assert app.conf.stream_wait_empty is False and service.stopping


def test_drain_abandons_what_it_cannot_answer_in_time_and_still_commits():
    engine_free = threading.Event()

    async def scenario():
        producer = FakeProducer()
        app = FakeApp(producer)
        service = service_with(LengthReranker(block=engine_free), producer, app)
        engine = asyncio.create_task(service.run_engine())
        for name in ("scoring", "queued"):
            await service.take(FakeStream(), FakeEvent(request(name, documents=["a"] * 40), name.encode(),
                                                       producer.events))
        await asyncio.sleep(0.2)  # the first request is in the (blocked) engine
        started = time.monotonic()
        await Drain(app, service.inbox, service.delivery, lambda: engine)(grace_s=1.0)
        return producer, app, service, time.monotonic() - started

    try:
        producer, app, service, took = asyncio.run(scenario())
    finally:
        engine_free.set()
    assert took < 1.5, "the drain keeps to its grace period"
    assert not any(e.startswith("ack") for e in producer.events)  # nothing answered: nothing acked
    assert service.inbox.queued == 0 and app.calls[-1] == "commit"
