"""Long documents in chunks (#23): where chunks fall, what each document's score is, and that the
scheduler and the window agree (on the untrained-head test model, ONNX fp32, 64 tokens a pair so
that passages are long: scores, not relevance)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from conftest_engines import NON_ASCII, fresh_seed, test_model_path  # noqa: F401

from engines import EngineConfig, JobRefused, JobTooLarge, RerankJob, build_reranker
from engines.chunking import split, word_starts
from engines.corpus import load_passages, queries
from engines.scheduler import Scheduler

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def reranker(test_model_path):
    return build_reranker(EngineConfig(engine="onnx", model=test_model_path, precision="fp32", device="cpu",
                                       max_length=MAX_LENGTH, prefilter_threshold=30, prefilter_keep=4))


def long_document(rng: random.Random, words: int) -> str:
    passages = load_passages(400)
    text = ""
    while len(text.split()) < words:
        text += rng.choice(passages) + " "
    return " ".join(text.split()[:words])


def alone(reranker, query: str, text: str) -> float:
    """The raw score of ``text`` read whole (truncated), as its own one-document job."""
    (outcome,) = reranker.rerank([RerankJob(query, [text], raw_scores=True)])
    return float(outcome.relevance[0])


@pytest.mark.parametrize("truncation", ["right", "left"])
def test_chunks_start_at_words_fit_the_room_and_cover_the_document(reranker, truncation):
    rng = random.Random(fresh_seed("chunk-spans"))
    runner = reranker.cross_encoder
    query = queries(8)[0]
    room = runner.document_room(query)
    text = long_document(rng, 400)
    spans = split(runner, text, room, max_chunks=50, overlap=8, truncation=truncation)
    assert spans is not None and len(spans) > 3
    encoding = runner.tokenizer.encode(text, add_special_tokens=False)
    starts = {encoding.offsets[i][0] for i in word_starts(text, encoding.offsets)}
    for k, (start, end) in enumerate(spans):
        assert start in starts or (truncation == "left" and k == len(spans) - 1 and start == spans[-1][0])
        assert len(runner.tokenizer.encode(text[start:end], add_special_tokens=False).ids) <= room
    assert spans[0][0] == 0 and spans[-1][1] == len(text)  # 50 chunks reach both ends
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 <= e0 < e1, "consecutive chunks overlap and move on"
    # A short document is not split at all.
    assert split(runner, "a short text", room, 4, 8, truncation) is None


def test_at_most_max_chunks_and_the_first_is_what_truncation_keeps(reranker):
    rng = random.Random(fresh_seed("chunk-first"))
    runner = reranker.cross_encoder
    query = queries(8)[1]
    text = long_document(rng, 600)
    spans = split(runner, text, runner.document_room(query), max_chunks=3, overlap=0, truncation="right")
    assert len(spans) == 3 and spans[-1][1] < len(text)
    assert alone(reranker, query, text[: spans[0][1]]) == pytest.approx(alone(reranker, query, text), abs=1e-6)
    left = split(runner, text, runner.document_room(query), max_chunks=1, overlap=0, truncation="left")
    assert len(left) == 1 and left[0][1] == len(text)


def test_a_long_document_takes_its_best_chunk_whose_span_scores_it_alone(reranker):
    rng = random.Random(fresh_seed("chunk-best"))
    query = queries(8)[2]
    long_docs = [long_document(rng, rng.randint(150, 500)) for _ in range(3)]
    short = ["Kafka keeps a log.", rng.choice(load_passages(400))[:150], *NON_ASCII[:2]]
    documents = [long_docs[0], short[0], long_docs[1], short[1], long_docs[2], short[2], short[3]]
    (chunked,) = reranker.rerank([RerankJob(query, documents, max_chunks=6, chunk_overlap=8, raw_scores=True)])
    (truncated,) = reranker.rerank([RerankJob(query, documents, raw_scores=True)])
    assert chunked.pairs_scored == sum(c.chunks for c in chunked.best_chunks.values()) + 4
    for d, text in enumerate(documents):
        best = chunked.best_chunks.get(d)
        if text in short:
            assert best is None and chunked.relevance[d] == truncated.relevance[d], "short documents as before"
            continue
        assert 1 < best.chunks <= 6 and 0 <= best.index < best.chunks
        assert alone(reranker, query, text[best.start:best.end]) == pytest.approx(chunked.relevance[d], abs=1e-5)
        assert chunked.relevance[d] >= truncated.relevance[d] - 1e-5, "never below the truncated score"
    assert truncated.best_chunks == {} and truncated.pairs_scored == len(documents)


def test_left_truncation_keeps_the_end(reranker):
    rng = random.Random(fresh_seed("chunk-left"))
    query = queries(8)[3]
    text = long_document(rng, 300) + " The final sentence names Kafka partitions."
    (outcome,) = reranker.rerank([RerankJob(query, [text, "short"], truncation="left", raw_scores=True)])
    best = outcome.best_chunks[0]
    assert (best.index, best.chunks, best.end) == (0, 1, len(text)) and best.start > 0
    assert alone(reranker, query, text[best.start:]) == pytest.approx(outcome.relevance[0], abs=1e-5)
    assert 1 not in outcome.best_chunks


def test_the_scheduler_gives_what_the_window_gives(reranker):
    rng = random.Random(fresh_seed("chunk-scheduler"))
    qs = queries(8)
    passages = load_passages(400)
    jobs = [RerankJob(qs[k], [long_document(rng, 300), *rng.sample(passages, 3)], max_chunks=4) for k in range(3)]
    jobs.append(RerankJob(qs[3], [long_document(rng, 200) for _ in range(40)], max_chunks=3, method="bm25"))
    jobs.append(RerankJob(qs[4], jobs[0].documents, truncation="left"))
    scheduler = Scheduler(reranker)
    for k, job in enumerate(jobs):
        scheduler.submit(k, job, reranker.plan(job))
    outcomes = {}
    while scheduler.busy:
        for done in scheduler.step().finished:
            outcomes[done.key] = done.outcome
    for k, job in enumerate(jobs):
        (window,) = reranker.rerank([job])
        got = outcomes[k]
        np.testing.assert_allclose(got.relevance, window.relevance, rtol=1e-5, atol=1e-5, err_msg=f"job {k}")
        assert got.best_chunks == window.best_chunks and got.pairs_scored == window.pairs_scored
    assert outcomes[3].prefiltered and len(outcomes[3].best_chunks) == 4


def test_the_plan_counts_chunks_and_refuses_too_many_pairs(reranker):
    text = "word " * 2000  # ~10,000 characters: ~2,500 tokens at 4 characters a token
    plan = reranker.plan(RerankJob("q", [text, "short"], max_chunks=5))
    assert plan.pairs == 6 and plan.chunking.max_chunks == 5
    assert reranker.plan(RerankJob("q", [text, "short"])).pairs == 2  # truncation: one pair each
    cut = reranker.plan(RerankJob("q", [text] * 3 + ["short"] * 40, max_chunks=5, prefilter=True, keep=4))
    assert cut.pairs == 3 * 5 + 1  # the keep costliest documents
    small = build_reranker(EngineConfig(engine="onnx", model=reranker.config.model, precision="fp32", device="cpu",
                                        max_length=MAX_LENGTH, max_pairs_per_request=10))
    with pytest.raises(JobTooLarge, match="max_pairs_per_request"):
        small.plan(RerankJob("q", [text, text], max_chunks=8))


def test_a_cross_encoder_refuses_an_instruction_and_bad_options(reranker):
    with pytest.raises(JobRefused, match="decoder rerankers"):
        reranker.plan(RerankJob("q", ["d"], instruction="Judge relevance"))
    with pytest.raises(JobRefused, match="max_chunks_per_doc"):
        reranker.plan(RerankJob("q", ["d"], max_chunks=0))
    with pytest.raises(JobRefused, match="truncation_direction"):
        reranker.plan(RerankJob("q", ["d"], truncation="middle"))
