"""The planner's queueing model: textbook queues against their closed forms, and the
worker's window rules on hand-made arrivals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from loadgen.bench.queueing import (ServiceModel, WindowPolicy, arrival_times, erlang_c, mm1_mean_wait, mmc_mean_wait,
                                    predict, replica_shares, sample_docs, saturated_rate, simulate_replica,
                                    weighted_percentile)

# one request per window, closed at once: the worker's rules reduce to a FIFO queue
NO_WINDOWS = WindowPolicy(max_pairs=1, window_s=0.0, prefilter_threshold=math.inf)


def exponential_service(mu: float) -> ServiceModel:
    return ServiceModel(fixed_s=1.0 / mu, per_pair_s=0.0, exponential=True)


def textbook_run(lam: float, mu: float, servers: int, n: int = 200_000, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    run = simulate_replica(arrival_times(lam, n, rng), np.ones(n, int), np.zeros(n, int), exponential_service(mu),
                           NO_WINDOWS, rng, servers=servers)
    return run.latency_s[n // 10:]


@pytest.mark.parametrize("lam", [0.5, 0.8])
def test_mm1_mean_wait_and_p99_match_the_closed_forms(lam):
    latency = textbook_run(lam, 1.0, servers=1)
    expected_mean = mm1_mean_wait(lam, 1.0) + 1.0  # wait + service = 1 / (μ - λ)
    assert latency.mean() == pytest.approx(expected_mean, rel=0.05)
    # M/M/1 sojourn time is exponential with rate μ - λ
    assert np.percentile(latency, 99) == pytest.approx(math.log(100) / (1.0 - lam), rel=0.08)


@pytest.mark.parametrize("servers,lam", [(2, 1.6), (3, 2.4), (4, 2.0)])
def test_mmc_mean_wait_matches_erlang_c(servers, lam):
    latency = textbook_run(lam, 1.0, servers=servers)
    wait = latency.mean() - 1.0
    assert wait == pytest.approx(mmc_mean_wait(lam, 1.0, servers), rel=0.08, abs=0.01)


def test_closed_forms_themselves():
    assert mm1_mean_wait(0.5, 1.0) == pytest.approx(1.0)
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: an arrival waits with probability ρ
    assert mmc_mean_wait(0.7, 1.0, 1) == pytest.approx(mm1_mean_wait(0.7, 1.0))
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # a = 1 Erlang on 2 servers
    assert mm1_mean_wait(1.0, 1.0) == math.inf and mmc_mean_wait(3.0, 1.0, 3) == math.inf


def test_partitioned_replicas_wait_longer_than_a_shared_queue():
    # two replicas fed by key (each its own M/M/1 at λ/2) against one M/M/2 queue: the
    # reason the planner does not use an M/M/c formula
    separate = mm1_mean_wait(0.8, 1.0)
    shared = mmc_mean_wait(1.6, 1.0, 2)
    assert separate > 2 * shared


def deterministic(seconds: float) -> ServiceModel:
    return ServiceModel(fixed_s=seconds, per_pair_s=0.0)


def test_a_lone_request_is_scored_a_gather_after_it_arrives():
    run = simulate_replica(np.array([0.0, 1.0]), np.ones(2, int), np.zeros(2, int), deterministic(0.010),
                           WindowPolicy(max_pairs=100, window_s=0.020), np.random.default_rng(0))
    assert run.window_requests.tolist() == [1, 1]
    assert run.latency_s == pytest.approx([0.011, 0.011])  # 1 ms of gathering, 10 ms of scoring


def test_window_ms_caps_gathering_while_requests_keep_coming():
    policy = WindowPolicy(max_pairs=100, window_s=0.020, gather_s=0.010)
    arrivals = np.array([0.000, 0.005, 0.012, 0.019, 0.026])
    run = simulate_replica(arrivals, np.ones(5, int), np.zeros(5, int), deterministic(0.010), policy,
                           np.random.default_rng(0))
    # each arrival comes within 10 ms of the last, so gathering would go on; window_ms closes
    # the window at 0.020 with the first four, done at 0.030; the fifth (0.026) then gathers
    # until 0.036 (nothing came for 10 ms), done at 0.046
    assert run.window_requests.tolist() == [4, 1]
    assert run.latency_s == pytest.approx([0.030, 0.025, 0.018, 0.011, 0.020])


def test_a_backlog_that_waited_for_the_engine_closes_at_once():
    policy = WindowPolicy(max_pairs=100, window_s=0.020, gather_s=0.010)
    arrivals = np.array([0.000, 0.030, 0.035])
    run = simulate_replica(arrivals, np.ones(3, int), np.zeros(3, int), deterministic(0.100), policy,
                           np.random.default_rng(0))
    # the first scores 0.010-0.110; the two that came meanwhile form the next window at 0.110
    # (both waited past their window_ms), done at 0.210
    assert run.window_requests.tolist() == [1, 2]
    assert run.latency_s == pytest.approx([0.110, 0.180, 0.175])


def test_a_window_closes_early_when_full_and_takes_what_fits():
    policy = WindowPolicy(max_pairs=10, window_s=0.3, gather_s=0.2)
    arrivals = np.array([0.0, 0.1, 0.2, 0.3])
    pairs = np.array([4, 4, 4, 1])
    run = simulate_replica(arrivals, pairs, np.zeros(4, int), deterministic(0.5), policy, np.random.default_rng(0))
    # 12 pairs are queued at 0.2: the window closes then with the first two (8 ≤ 10);
    # scoring ends at 0.7; the rest (5 pairs) have waited past their window (0.2 + 0.3): at once
    assert run.window_requests.tolist() == [2, 2]
    assert run.window_pairs.tolist() == [8, 5]
    assert run.latency_s == pytest.approx([0.7, 0.6, 1.0, 0.9])


def test_a_busy_engine_delays_the_window_and_one_oversized_request_goes_alone():
    policy = WindowPolicy(max_pairs=10, window_s=0.0)
    arrivals = np.array([0.0, 0.1])
    run = simulate_replica(arrivals, np.array([50, 1]), np.zeros(2, int), ServiceModel(0.0, 0.01), policy,
                           np.random.default_rng(0))
    # 50 pairs: a window of its own, 0.5 s; the second waits for the engine
    assert run.window_pairs.tolist() == [50, 1]
    assert run.latency_s == pytest.approx([0.5, 0.41])


def test_prefilter_turns_documents_into_keep_pairs():
    policy = WindowPolicy(prefilter_threshold=100, prefilter_keep=30)
    pairs, read = policy.pairs(np.array([10, 100, 101, 500]))
    assert pairs.tolist() == [10, 100, 30, 30]
    assert read.tolist() == [0, 0, 101, 500]


def test_fit_recovers_a_linear_service_time_and_its_noise():
    rng = np.random.default_rng(3)
    pairs = rng.integers(1, 512, 400)
    docs = np.where(rng.random(400) < 0.3, rng.integers(200, 1000, 400), 0)
    noise = rng.lognormal(0, 0.1, 400)
    seconds = (0.02 + 0.004 * pairs + 0.0005 * docs) * noise
    model = ServiceModel.fit(np.column_stack([pairs, docs, seconds]))
    assert model.fixed_s == pytest.approx(0.02, abs=0.01)
    assert model.per_pair_s == pytest.approx(0.004, rel=0.05)
    assert model.per_prefiltered_doc_s == pytest.approx(0.0005, rel=0.1)
    assert np.median(model.ratios) == pytest.approx(1.0, abs=0.05)
    assert model.max_pairs_seen == pairs.max()


def test_fit_of_full_windows_only_is_time_per_pair():
    # every window the same size: the fixed part cannot be told apart, so it is left out
    windows = np.array([[512, 0, 2.0], [512, 0, 2.2], [512, 0, 1.8]])
    model = ServiceModel.fit(windows)
    assert model.fixed_s == 0 and model.per_pair_s == pytest.approx(2.0 / 512, rel=0.05)
    # the residuals drawn in the simulation bring the mean back to what was measured
    assert model.mean_s(512) * model.ratios.mean() == pytest.approx(2.0)


def test_fit_needs_windows():
    with pytest.raises(ValueError):
        ServiceModel.fit(np.empty((0, 3)))


def test_saturated_rate_is_full_windows_back_to_back():
    policy = WindowPolicy(max_pairs=100, window_s=0.02)
    service = ServiceModel(fixed_s=0.1, per_pair_s=0.01)  # a full window of 10 × 10 docs: 1.1 s
    rps, docs_per_s = saturated_rate(service, policy, [(1.0, 10, 10)], np.random.default_rng(0), n=1000)
    assert rps == pytest.approx(10 / 1.1, rel=0.01)
    assert docs_per_s == pytest.approx(100 / 1.1, rel=0.01)


def test_uneven_partitions_load_some_replicas_more():
    assert replica_shares(2, 6) == [(2, 0.5)]
    assert replica_shares(4, 6) == [(2, 2 / 6), (2, 1 / 6)]
    assert replica_shares(8, 6) == [(6, 1 / 6)]  # two idle
    policy = WindowPolicy(max_pairs=1, window_s=0.0)
    service = ServiceModel(fixed_s=0.1, per_pair_s=0.0, exponential=True)
    rng = np.random.default_rng(0)
    even = predict(24.0, [(1.0, 1, 1)], service, policy, 4, 12, rng, requests_per_level=20_000)
    uneven = predict(24.0, [(1.0, 1, 1)], service, policy, 4, 6, rng, requests_per_level=20_000)
    assert even.load_over_capacity == pytest.approx(0.6, rel=0.02)
    assert uneven.load_over_capacity == pytest.approx(0.8, rel=0.02)  # two replicas take a third each
    assert uneven.p99_s > even.p99_s


def test_predict_matches_mm1_per_replica_and_flags_overload():
    service = exponential_service(10.0)
    rng = np.random.default_rng(5)
    # 3 replicas, 3 partitions, 21 req/s: each an M/M/1 at 7 of 10 req/s
    p = predict(21.0, [(1.0, 1, 1)], service, NO_WINDOWS, 3, 3, rng, requests_per_level=100_000)
    assert p.stable and p.load_over_capacity == pytest.approx(0.7, rel=0.02)
    assert p.mean_s == pytest.approx(1 / (10 - 7), rel=0.05)
    assert p.p99_s == pytest.approx(math.log(100) / 3, rel=0.1)
    assert not predict(31.0, [(1.0, 1, 1)], service, NO_WINDOWS, 3, 3, rng).stable


def test_regular_arrivals_wait_less_than_poisson():
    service = ServiceModel(fixed_s=0.1, per_pair_s=0.0)
    rng = np.random.default_rng(2)
    poisson = predict(8.0, [(1.0, 1, 1)], service, NO_WINDOWS, 1, 1, rng, "poisson")
    regular = predict(8.0, [(1.0, 1, 1)], service, NO_WINDOWS, 1, 1, rng, "regular")
    assert regular.p99_s == pytest.approx(0.1)  # D/D/1 below capacity: nobody waits
    assert poisson.p99_s > 2 * regular.p99_s


def test_docs_and_percentile_helpers():
    docs = sample_docs([(0.75, 1, 1), (0.25, 10, 20)], 40_000, np.random.default_rng(0))
    assert set(np.unique(docs[docs < 10])) == {1}
    assert (docs[docs >= 10] <= 20).all()
    assert np.mean(docs == 1) == pytest.approx(0.75, abs=0.01)
    values, weights = np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.1, 0.8])
    assert weighted_percentile(values, weights, 50) == 3.0
    assert weighted_percentile(values, weights, 15) == 2.0


def test_small_windows_draw_their_noise_from_small_windows():
    rng = np.random.default_rng(9)
    small = np.column_stack([rng.integers(1, 20, 200), np.zeros(200), np.zeros(200)])
    full = np.column_stack([np.full(200, 512), np.zeros(200), np.zeros(200)])
    small[:, 2] = (0.005 + 0.004 * small[:, 0]) * rng.choice([0.5, 1.5], 200)  # ±50%
    full[:, 2] = (0.005 + 0.004 * 512) * rng.choice([0.98, 1.02], 200)  # ±2%
    model = ServiceModel.fit(np.vstack([small, full]))
    assert len(model.ratio_bins) == 4 and model.ratio_bins[-1][0] == math.inf
    draws = rng.random(2000)
    full_factors = np.array([model.factor(512, u) for u in draws])
    small_factors = np.array([model.factor(5, u) for u in draws])
    assert full_factors.std() < 0.1 and small_factors.std() > 0.3
    # fit and residuals together give back each size's measured mean
    assert (model.mean_s(512) * full_factors).mean() == pytest.approx(0.005 + 0.004 * 512, rel=0.02)
    assert (model.mean_s(5) * small_factors).mean() == pytest.approx(0.005 + 0.004 * 5, rel=0.15)
