"""The request policy and the outcome it leads to, without a model: which jobs are cut, by what,
what they cost, what is refused; the relevance, stages and order an answer takes as they are."""
from __future__ import annotations

import re

import numpy as np
import pytest

from engines import EngineConfig, JobRefused, RerankJob
from engines.families import IDENTITY, SIGMOID, TANH, activate
from engines.outcome import cosine_outcome, cross_encoder_outcome, response_order
from engines.policy import plan_job
from vocabulary import BM25, CLIENT, CROSS_ENCODER_STAGE, PREFILTER_METHODS, PREFILTER_STAGE, STATIC

CONFIG = EngineConfig(prefilter_threshold=5, prefilter_keep=3, prefilter_method=BM25)


def docs(n: int) -> list[str]:
    return [f"document {k}" for k in range(n)]


@pytest.mark.parametrize("job, prefilter, method, pairs", [
    (RerankJob("q", docs(5)), False, None, 5),                       # at the threshold: not cut
    (RerankJob("q", docs(6)), True, BM25, 3),                        # above it: cut to keep
    (RerankJob("q", docs(6), prefilter=False), False, None, 6),      # the job says no
    (RerankJob("q", docs(4), prefilter=True), True, BM25, 3),        # the job says yes
    (RerankJob("q", docs(3), prefilter=True), False, None, 3),       # keep >= n: nothing to cut
    (RerankJob("q", docs(9), keep=7, method=STATIC), True, STATIC, 7),
    (RerankJob("q", docs(9), keep=0), True, BM25, 0),                # the first stage alone
])
def test_a_job_is_cut_when_it_asks_or_is_large_and_costs_the_pairs_it_keeps(job, prefilter, method, pairs):
    plan = plan_job(job, CONFIG)
    assert (plan.prefilter, plan.method, plan.pairs, plan.documents) == (prefilter, method, pairs, len(job.documents))


def test_the_bi_encoder_engine_cuts_nothing_costs_every_document_and_refuses_a_first_stages_options():
    for job in (RerankJob("q", docs(50)), RerankJob("q", docs(50), prefilter=False)):
        plan = plan_job(job, CONFIG, cross_encoder=False)
        assert (plan.prefilter, plan.method, plan.pairs) == (False, None, 50)
    with pytest.raises(JobRefused, match=r"has no first stage: prefilter, keep, method need a cross-encoder engine; "
                                         r"leave them out"):
        plan_job(RerankJob("q", docs(50), prefilter=True, keep=2, method=CLIENT), CONFIG, cross_encoder=False)
    with pytest.raises(JobRefused, match=r"keep need a cross-encoder engine; leave it out"):
        plan_job(RerankJob("q", docs(50), keep=2), CONFIG, cross_encoder=False)


def test_a_client_cut_needs_a_finite_score_on_every_document_and_only_then():
    scored = RerankJob("q", docs(6), method=CLIENT, scores=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    np.testing.assert_array_equal(plan_job(scored, CONFIG).client_scores, [1, 2, 3, 4, 5, 6])
    with pytest.raises(JobRefused, match=r"but documents\[1\], documents\[4\] have none: give every document"):
        plan_job(RerankJob("q", docs(6), method=CLIENT, scores=[1.0, None, 3.0, 4.0, float("inf"), 6.0]), CONFIG)
    with pytest.raises(JobRefused, match="5 scores for 6 documents"):
        plan_job(RerankJob("q", docs(6), method=CLIENT, scores=[1.0] * 5), CONFIG)
    # Not cut (too few documents, or told not to): the scores are not read, so none are needed.
    assert plan_job(RerankJob("q", docs(5), method=CLIENT), CONFIG).client_scores is None
    assert not plan_job(RerankJob("q", docs(9), method=CLIENT, prefilter=False), CONFIG).prefilter


@pytest.mark.parametrize("job, message", [
    (RerankJob("q", docs(9), method="tfidf"), "unknown prefilter method 'tfidf'; known: " + ", ".join(PREFILTER_METHODS)),
    (RerankJob("q", docs(9), keep=-1), "keep must be >= 0"),
    (RerankJob(b"q", docs(2)), "query must be a string"),
    (RerankJob("q", "one long string"), "documents must be a list of strings"),
])
def test_a_job_the_engine_cannot_score_is_refused_with_its_reason(job, message):
    with pytest.raises(JobRefused, match=re.escape(message)):
        plan_job(job, CONFIG)


def test_a_default_keep_of_zero_is_refused_by_the_config():
    with pytest.raises(ValueError, match="prefilter_keep must be >= 1"):
        EngineConfig(prefilter_keep=0).validate()


@pytest.mark.parametrize("activation", [SIGMOID, IDENTITY, TANH])
def test_relevance_is_the_activated_score_of_cross_encoded_documents_and_the_first_stage_score_elsewhere(activation):
    plan = plan_job(RerankJob("q", docs(6)), CONFIG)  # cut to 3
    scores = np.array([0.5, 3.0, -1.0, 7.0, 2.0, 0.25], dtype=np.float32)
    cross = np.array([False, True, True, True, False, False])
    outcome = cross_encoder_outcome(plan, scores, cross, "logit", activation, raw_scores=False)
    np.testing.assert_allclose(outcome.relevance[cross], activate(activation, scores[cross]))
    np.testing.assert_array_equal(outcome.relevance[~cross], scores[~cross])
    assert outcome.stages == (PREFILTER_STAGE, CROSS_ENCODER_STAGE, CROSS_ENCODER_STAGE, CROSS_ENCODER_STAGE,
                              PREFILTER_STAGE, PREFILTER_STAGE)
    # Cross-encoded first (by relevance), then the cut ones by their first-stage score.
    assert list(outcome.order) == [3, 1, 2, 4, 0, 5]
    raw = cross_encoder_outcome(plan, scores, cross, "logit", activation, raw_scores=True)
    np.testing.assert_array_equal(raw.relevance, scores.astype(np.float64))
    assert outcome.cross_encoder_scored == 3 and outcome.prefiltered and outcome.first_stage == BM25


def test_the_order_follows_the_relevance_the_answer_shows_ties_by_index():
    """Logits far apart can have the same sigmoid in float64 (both 1.0): the answer then
    ranks them by index, and so must the order, or the response would be out of its order."""
    plan = plan_job(RerankJob("q", docs(4)), CONFIG)
    scores = np.array([40.0, 50.0, -3.0, 45.0], dtype=np.float32)
    outcome = cross_encoder_outcome(plan, scores, np.ones(4, dtype=bool), "logit", SIGMOID, raw_scores=False)
    assert outcome.relevance[0] == outcome.relevance[1] == outcome.relevance[3] == 1.0
    assert list(outcome.order) == [0, 1, 3, 2]
    assert set(outcome.stages) == {CROSS_ENCODER_STAGE} and not outcome.prefiltered


def test_the_bi_encoder_engines_cosines_are_its_cross_encoder_stage():
    outcome = cosine_outcome(np.array([0.1, 0.9, 0.5], dtype=np.float32))
    assert list(outcome.order) == [1, 2, 0] and outcome.stages == (CROSS_ENCODER_STAGE,) * 3
    assert outcome.score_kind == "cosine" and outcome.bi_encoder_scored == 3


def test_response_order_puts_cut_documents_last_whatever_their_score():
    assert list(response_order(np.array([9.0, 1.0, 5.0]), np.array([True, False, False]))) == [2, 1, 0]
