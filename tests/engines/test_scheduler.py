"""The continuous scheduler: the same scores as a job scored alone, small jobs before large ones,
ageing, priority, deadlines, failures kept to their own jobs, identical pairs scored once, and
OpenVINO's bucketed shapes (on the untrained-head test model: scores, not relevance)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from conftest_engines import fresh_seed, test_model_path  # noqa: F401

from engines import EngineConfig, RerankJob, build_reranker
from engines.batching import SIZE_BUCKETS
from engines.corpus import load_passages, queries
import engines.scheduler
from engines.scheduler import AGEING_MAX_PAIRS, AGEING_S_PER_PAIR, OWN_FIRST_ROOMS, Scheduler


@pytest.fixture(scope="module")
def reranker(test_model_path):
    # ONNX fp32: deterministic, so a pair's score does not depend on what shares its micro-batch.
    return build_reranker(EngineConfig(engine="onnx", model=test_model_path, precision="fp32", device="cpu",
                                       prefilter_threshold=60, prefilter_keep=12, max_batch_tokens=2048))


@pytest.fixture(scope="module")
def openvino(test_model_path):
    # fp32: int8 activations on a rounding boundary can flip with the micro-batch's shape (by ~1e-4),
    # which would blur what is checked here (every score back in its own job and place).
    return build_reranker(EngineConfig(engine="openvino", model=test_model_path, precision="fp32", device="cpu",
                                       max_batch_tokens=2048))  # 11 passages fit one micro-batch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_all(scheduler: Scheduler, limit: int = 10_000) -> tuple[dict, list]:
    """Steps until idle: the outcome of every finished job by key, and the steps' results."""
    outcomes, steps = {}, []
    while scheduler.busy and len(steps) < limit:
        step = scheduler.step()
        steps.append(step)
        outcomes.update({f.key: f.outcome for f in step.finished})
        assert not step.failed, step.failed
    return outcomes, steps


def finish_order(steps) -> list:
    return [f.key for step in steps for f in step.finished]


def jobs_of_mixed_sizes(seed: int) -> list[RerankJob]:
    rng = random.Random(seed)
    passages = load_passages()
    qs = queries(12, seed=seed)
    jobs = [RerankJob(qs[k], rng.sample(passages, rng.choice([1, 3, 8, 15, 40, 90])),
                      raw_scores=bool(k % 2)) for k in range(8)]
    docs = rng.sample(passages, 80)
    jobs += [
        RerankJob(qs[8], docs, method="bm25"),  # cut by its first stage: 80 > 60
        RerankJob(qs[9], docs, prefilter=True, keep=5, method="client", scores=[rng.random() for _ in docs]),
        RerankJob(qs[10], docs[:20], prefilter=True, keep=0, method="bm25"),  # the first stage alone
        RerankJob(qs[11], [docs[0], docs[1], docs[0]]),  # a document twice
        RerankJob(qs[0], jobs[0].documents),  # the same pairs as the first job
    ]
    return jobs


def test_every_job_gets_the_outcome_it_gets_alone(reranker):
    jobs = jobs_of_mixed_sizes(fresh_seed("scheduler-same"))
    scheduler = Scheduler(reranker)
    for k, job in enumerate(jobs):
        scheduler.submit(k, job, reranker.plan(job))
    outcomes, steps = run_all(scheduler)
    assert sorted(outcomes) == list(range(len(jobs)))
    for k, job in enumerate(jobs):
        (alone,) = reranker.rerank([job])
        got = outcomes[k]
        np.testing.assert_allclose(got.relevance, alone.relevance, rtol=1e-5, atol=1e-5, err_msg=f"job {k}")
        assert list(got.order) == list(alone.order) and got.stages == alone.stages, f"job {k}"
        assert (got.prefiltered, got.first_stage, got.cross_encoder_scored) == (
            alone.prefiltered, alone.first_stage, alone.cross_encoder_scored)
    assert {s.kind for s in steps} >= {"first_stage", "micro_batch"}


def test_identical_pairs_of_live_jobs_are_scored_once(reranker):
    docs = load_passages()[:30]
    scheduler = Scheduler(reranker)
    before = reranker.cross_encoder.stats.sequences
    for k in range(3):
        job = RerankJob("how do I open a file", docs + docs[:5])
        scheduler.submit(k, job, reranker.plan(job))
    outcomes, _ = run_all(scheduler)
    assert reranker.cross_encoder.stats.sequences - before == 30
    assert all(np.array_equal(outcomes[0].relevance, outcomes[k].relevance) for k in (1, 2))


def test_a_small_job_overtakes_a_large_one_in_progress_and_fifo_does_not(reranker):
    passages = load_passages()
    large = RerankJob("a large request", passages[:200], prefilter=False)
    small = RerankJob("a small request", passages[300:306])
    for policy, small_first in (("aged", True), ("shortest", True), ("fifo", False)):
        scheduler = Scheduler(reranker, policy=policy)
        scheduler.submit("large", large, reranker.plan(large))
        first = scheduler.step()
        assert first.kind == "micro_batch" and 0 < first.pairs < 200  # the large job has begun
        scheduler.submit("small", small, reranker.plan(small))
        _, steps = run_all(scheduler)
        if small_first:
            assert finish_order(steps) == ["small", "large"], policy
            assert steps[0].finished and steps[0].finished[0].key == "small", "answered after one micro-batch"
        else:  # the large job's pairs go first; the small one's only fill room its width class leaves
            assert "small" not in [f.key for f in steps[0].finished]


def test_a_job_that_waited_long_enough_goes_before_a_newer_smaller_one(reranker):
    passages = load_passages()
    large = RerankJob("waited long", passages[:40], prefilter=False)
    small = RerankJob("arrived now", passages[100:104])
    clock = Clock()
    scheduler = Scheduler(reranker, clock=clock)
    scheduler.submit("large", large, reranker.plan(large))
    clock.now += (40 - 4) * AGEING_S_PER_PAIR + 0.01  # just past the pairs between them
    scheduler.submit("small", small, reranker.plan(small))
    step = scheduler.step()
    assert step.anchor_waited_s > 0.7  # the large job was chosen
    clock.now -= 0.02  # had it waited a little less, the small one would have gone first
    again = Scheduler(reranker, clock=clock)
    again.submit("large", large, reranker.plan(large))
    clock.now += (40 - 4) * AGEING_S_PER_PAIR - 0.01
    again.submit("small", small, reranker.plan(small))
    assert again.step().anchor_waited_s == 0.0


def test_large_jobs_go_in_arrival_order_among_themselves_and_small_ones_still_overtake(reranker):
    passages = load_passages()
    largest = RerankJob("the largest, first", passages[:100], prefilter=False)
    large = RerankJob("a large one, later", passages[200:260], prefilter=False)
    small = RerankJob("a small one, later", passages[300:304])
    assert len(large.documents) > AGEING_MAX_PAIRS  # both large ones past the cap
    clock = Clock()
    scheduler = Scheduler(reranker, clock=clock)
    scheduler.submit("largest", largest, reranker.plan(largest))
    clock.now += 0.5  # uncapped, the 60-pair job would have gone first: 0.5 s < 40 pairs' worth
    scheduler.submit("large", large, reranker.plan(large))
    scheduler.submit("small", small, reranker.plan(small))
    first = scheduler.step()
    assert [f.key for f in first.finished] == ["small"]
    assert scheduler.step().anchor_waited_s == pytest.approx(0.5)  # then the one that arrived first


def test_priority_goes_first_and_a_passed_deadline_is_not_scored(reranker):
    passages = load_passages()
    scheduler = Scheduler(reranker, wall_clock=lambda: 1000.0)
    urgent = RerankJob("urgent and large", passages[:50], prefilter=False)
    small = RerankJob("small", passages[60:63])
    late = RerankJob("too late", passages[70:73])
    scheduler.submit("small", small, reranker.plan(small))
    scheduler.submit("urgent", urgent, reranker.plan(urgent), priority=5)
    scheduler.submit("late", late, reranker.plan(late), deadline=999.0)
    first = scheduler.step()
    assert first.expired == ["late"]
    _, steps = run_all(scheduler)
    assert finish_order([first, *steps]) == ["urgent", "small"]


def test_an_engine_failure_fails_only_the_jobs_in_that_micro_batch(reranker, monkeypatch):
    passages = load_passages()
    scheduler = Scheduler(reranker)
    jobs = {"first": RerankJob("q1", passages[:3]), "second": RerankJob("q2", passages[10:90], prefilter=False)}
    for key, job in jobs.items():
        scheduler.submit(key, job, reranker.plan(job))
    backend = reranker.cross_encoder.backend
    real_run = backend.run
    calls = {"n": 0}

    def fails_once(*arrays):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        return real_run(*arrays)

    monkeypatch.setattr(backend, "run", fails_once)
    step = scheduler.step()
    failed = {key for key, _ in step.failed}
    assert "first" in failed and len(failed) == step.requests  # every job with a pair in that batch
    assert all("device lost" in str(exc) for _, exc in step.failed)
    later = RerankJob("q3", passages[100:104])
    scheduler.submit("later", later, reranker.plan(later))
    outcomes, _ = run_all(scheduler)
    assert set(outcomes) == ({"first", "second", "later"} - failed) and not scheduler.busy


def test_openvino_gets_bucketed_sizes_the_scores_it_gives_alone_and_a_small_job_is_not_split(openvino):
    passages = load_passages()
    rng = random.Random(fresh_seed("scheduler-buckets"))
    backend = openvino.cross_encoder.backend
    real_run, shapes = backend.run, []

    def recorded(ids, mask, types):
        shapes.append(ids.shape)
        return real_run(ids, mask, types)

    jobs = [RerankJob(f"query {k}", rng.sample(passages, rng.choice([5, 7, 11, 60])), prefilter=False)
            for k in range(6)]
    scheduler = Scheduler(openvino)
    for k, job in enumerate(jobs):
        scheduler.submit(k, job, openvino.plan(job))
    backend.run = recorded
    try:
        outcomes, _ = run_all(scheduler)
    finally:
        backend.run = real_run
    assert all(rows in SIZE_BUCKETS for rows, _ in shapes), shapes
    for k, job in enumerate(jobs):
        (alone,) = openvino.rerank([job])
        np.testing.assert_allclose(outcomes[k].relevance, alone.relevance, atol=1e-5)
    small = RerankJob("eleven documents", passages[500:511])
    lone = Scheduler(openvino)
    lone.submit("small", small, openvino.plan(small))
    _, lone_steps = run_all(lone)
    assert [s.kind for s in lone_steps] == ["micro_batch"], "11 pairs: one micro-batch of 12 rows, not 8 + 3"


def test_equally_urgent_jobs_are_batched_by_length_and_a_lone_small_job_stays_whole(reranker, monkeypatch):
    """A backlog of small jobs of the same urgency is cut by length, as windows were (little
    padding); a small job alone in its urgency gets all its pairs in one micro-batch."""
    passages = sorted(load_passages()[:400], key=len)
    short, long_ = passages[:200], passages[-200:]
    backend = reranker.cross_encoder.backend
    real_run, rows = backend.run, []

    def recorded(ids, mask, types):
        rows.append(mask.sum(axis=1))
        return real_run(ids, mask, types)

    monkeypatch.setattr(backend, "run", recorded)
    scheduler = Scheduler(reranker, clock=Clock())  # one arrival time: every job as urgent
    for k in range(12):
        job = RerankJob(f"query {k}", [long_[-1 - k], *short[5 * k : 5 * k + 5]])  # one long document each
        scheduler.submit(k, job, reranker.plan(job))
    step = scheduler.step()
    run_all(scheduler)
    first = rows[0]
    # Cut by length across jobs, the longest first: every job's long document in the first batch.
    assert step.requests == 12 and first.min() >= max(batch.max() for batch in rows[1:]), rows

    rows.clear()
    lone = Scheduler(reranker)
    job = RerankJob("alone", [long_[50], *short[100:105]])
    lone.submit("alone", job, reranker.plan(job))
    (step,) = [s for s in run_all(lone)[1] if s.kind == "micro_batch"]
    assert step.pairs == 6 and len(rows) == 1  # its short documents ride along with its long one


def test_jobs_behind_a_large_one_are_prepared_so_that_its_batches_are_cut_with_their_pairs(reranker):
    """A large job's micro-batches are cut by length from a pool of pending pairs; jobs that
    arrive meanwhile are prepared (first stage, tokenizing) first, so that the pool holds theirs
    too. Taken one at a time, each large job was batched alone, with twice a window's padding."""
    passages = load_passages()
    scheduler = Scheduler(reranker)
    first = RerankJob("the first large request", passages[:60], prefilter=False)
    scheduler.submit("first", first, reranker.plan(first))
    assert scheduler.step().kind == "micro_batch"
    cut = RerankJob("a large request cut to 50", passages[100:180], prefilter=True, keep=50, method="bm25")
    whole = RerankJob("a large request not cut", passages[200:250], prefilter=False)
    scheduler.submit("cut", cut, reranker.plan(cut))
    scheduler.submit("whole", whole, reranker.plan(whole))
    assert scheduler.step().kind == "first_stage"  # the cut one's, before the first one goes on
    shared = scheduler.step()
    assert shared.kind == "micro_batch" and shared.requests > 1, (shared.kind, shared.requests)
    outcomes, _ = run_all(scheduler)
    assert set(outcomes) == {"first", "cut", "whole"}


def test_a_backlog_is_cut_at_the_backlog_budget_and_a_lone_small_job_at_the_ordinary_one(test_model_path,
                                                                                            monkeypatch):
    """Small jobs as urgent as each other wait for each other anyway: their micro-batches may hold
    up to ``max_backlog_batch_tokens``. A lone small job's batch, fillers included, keeps to
    ``max_batch_tokens``, so that what arrives meanwhile waits no longer for it."""
    reranker = build_reranker(EngineConfig(engine="onnx", model=test_model_path, precision="fp32", device="cpu",
                                           max_batch_tokens=512, max_backlog_batch_tokens=1024))
    backend = reranker.cross_encoder.backend
    real_run, tokens = backend.run, []

    def recorded(ids, mask, types):
        tokens.append(ids.shape[0] * ids.shape[1])
        return real_run(ids, mask, types)

    monkeypatch.setattr(backend, "run", recorded)
    passages = sorted(load_passages()[:400], key=len)[:120]  # short ones: many fit a batch
    backlog = Scheduler(reranker, clock=Clock())  # one arrival time: every job as urgent
    for k in range(12):
        job = RerankJob(f"query {k}", passages[6 * k : 6 * k + 6])
        backlog.submit(k, job, reranker.plan(job))
    outcomes, _ = run_all(backlog)
    assert len(outcomes) == 12
    assert max(tokens) > 512 and max(tokens) <= 1024, tokens

    tokens.clear()
    clock = Clock()
    lone = Scheduler(reranker, clock=clock)
    large = RerankJob("a large request", passages[:90], prefilter=False)
    lone.submit("large", large, reranker.plan(large))
    lone.step()
    clock.now += 1.0
    small = RerankJob("a small request", passages[90:94])
    lone.submit("small", small, reranker.plan(small))
    tokens.clear()
    step = lone.step()
    assert [f.key for f in step.finished] == ["small"] and step.pairs > 4, step  # filled from the large one
    assert tokens[-1] <= 512, tokens
    run_all(lone)


def test_a_job_a_little_past_one_batch_is_done_in_two_beside_a_large_one(reranker, monkeypatch):
    """A job that does not fit one micro-batch but fits two takes its own pairs first: beside a
    large job whose pairs of each width could fill its batches, it went one width class per
    micro-batch (a 12-15-document request took four or five beside 50-100-document ones)."""
    passages = load_passages()
    for rooms in (0, OWN_FIRST_ROOMS):
        monkeypatch.setattr(engines.scheduler, "OWN_FIRST_ROOMS", rooms)
        scheduler = Scheduler(reranker, clock=Clock())
        large = RerankJob("a large request of its own", passages[:400], prefilter=False)
        medium = RerankJob("a request a little past one batch", passages[500:525], prefilter=False)
        scheduler.submit("large", large, reranker.plan(large))
        scheduler.submit("medium", medium, reranker.plan(medium))
        batches = 0
        while True:
            step = scheduler.step()
            batches += step.kind == "micro_batch"
            if "medium" in [f.key for f in step.finished]:
                break
        # Without the rule (0) the medium job takes a batch per width class, its own pairs of one
        # class beside the large job's: three here. So this test fails without it.
        assert batches > 2 if rooms == 0 else batches <= 2, (rooms, batches)
        assert set(run_all(scheduler)[0]) == {"large"}
