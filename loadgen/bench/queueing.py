"""A queueing model of the worker: windows on replicas, simulated event by event.

What it models is the worker of 0.2, which scored windows one at a time (``streams.windows``,
``streams.worker`` then). Since 0.3 the worker's engine schedules pairs continuously
(:mod:`engines.scheduler`): each request is answered when its own pairs are done, small ones
first, so for mixed sizes this model is pessimistic about small requests. For the scheduler,
:mod:`loadgen.bench.scheduler_replay` runs mixed arrivals through the real
:class:`~engines.scheduler.Scheduler` in virtual time (one worker, no partitions). What it models:

* Requests are keyed by ``request_id``, so each lands on a partition at random and every
  partition belongs to one replica. **Replicas do not share a queue**: c replicas are c
  independent queues, each fed its partitions' share of the traffic (not one M/M/c queue,
  whose idle server would take any waiting request). A replica holding more partitions
  than another gets more of the load.
* Within a replica, one scoring thread takes windows one at a time, and asks for the next
  one only when the engine is free. From then (or from the first request's arrival, if none
  is queued) the window gathers: it closes once no request has arrived for ``gather_s``
  (a millisecond), or when the queued requests hold ``max_pairs`` pairs, and never later
  than ``window_s`` after its first request arrived (so a backlog that waited for a busy
  engine closes at once). It then takes the queued requests oldest first while their pairs
  fit (at least one).
* A window's time (scoring, then building its answers, before the loop takes the next
  window) is ``fixed + per_pair × pairs + per_prefiltered_doc × documents the bi-encoder
  read``, times a noise factor drawn from the residuals measured (or Exp(1) for the
  textbook cases). Every request then adds an overhead drawn from the measured rest of its
  latency (Kafka both ways).

Why a simulation and not a formula: a window serves a batch whose size depends on the load
(small windows at low load cost more per pair), it gathers for a moment at low load and
not at all behind a backlog, and the scoring time is not exponential; no closed form covers that,
and an M/G/c formula would also assume the shared queue that partitions rule out. The
simulation runs the worker's own rules on measured service times, and it is checked
against M/M/1 and M/M/c (``servers`` > 1, a shared queue) where the closed forms hold.
"""
from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from loadgen.distributions import Mix

#: residuals by window size: at most MAX_BINS bins of at least BIN_WINDOWS windows each
MAX_BINS, BIN_WINDOWS = 4, 50


@dataclass(frozen=True)
class WindowPolicy:
    """The worker settings that shape windows and pairs (RERANK_WINDOW_MAX_PAIRS, _WINDOW_MS,
    _PREFILTER_THRESHOLD, _PREFILTER_KEEP, _WINDOW_GATHER_MS)."""

    max_pairs: int = 512
    window_s: float = 0.020
    prefilter_threshold: float = 100  # math.inf: no prefilter (e.g. the bi-encoder engine)
    prefilter_keep: int = 100
    gather_s: float = 0.001  # RERANK_WINDOW_GATHER_MS

    def pairs(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cross-encoder pairs, documents the bi-encoder read) per request."""
        prefiltered = docs > self.prefilter_threshold
        pairs = np.where(prefiltered, np.minimum(docs, self.prefilter_keep), docs)
        return pairs.astype(np.int64), np.where(prefiltered, docs, 0).astype(np.int64)


@dataclass
class ServiceModel:
    """A window's scoring time (seconds) from its size, with measured noise."""

    fixed_s: float
    per_pair_s: float
    per_prefiltered_doc_s: float = 0.0
    # multiplicative residuals (measured / fitted), drawn with replacement; None: none
    ratios: np.ndarray | None = None
    # the same residuals by window size: (largest pairs of the bin, its sorted ratios); a
    # window draws from its own size's bin, since small windows vary more than full ones
    ratio_bins: list[tuple[float, np.ndarray]] | None = None
    exponential: bool = False  # noise ~ Exp(1): the textbook M/M/c service
    # per-request latency outside the worker (s, Kafka both ways), drawn with replacement
    overhead_s: np.ndarray | None = None
    samples: int = 0  # windows the fit used
    max_pairs_seen: int = 0

    def mean_s(self, pairs: float, prefiltered_docs: float = 0.0) -> float:
        return self.fixed_s + self.per_pair_s * pairs + self.per_prefiltered_doc_s * prefiltered_docs

    def noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """One draw per window: the factor itself, or a uniform that ``factor`` maps to a
        ratio of the window's size bin."""
        if self.exponential:
            return rng.exponential(1.0, n)
        if self.ratio_bins:
            return rng.random(n)
        if self.ratios is not None and len(self.ratios):
            return rng.choice(self.ratios, n)
        return np.ones(n)

    def factor(self, pairs: float, draw: float) -> float:
        if not self.ratio_bins or self.exponential:
            return draw
        for upper, ratios in self.ratio_bins:
            if pairs <= upper:
                break
        return float(ratios[int(draw * len(ratios))])

    def overhead(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.overhead_s is not None and len(self.overhead_s):
            return rng.choice(self.overhead_s, n)
        return np.zeros(n)

    @classmethod
    def fit(cls, windows: np.ndarray, overhead_s: np.ndarray | None = None) -> "ServiceModel":
        """Least squares (of relative errors) of seconds on (1, pairs, prefiltered documents)
        over measured windows (rows: pairs, prefiltered documents, seconds). A coefficient that comes out
        negative is dropped and the rest refitted; the prefilter's term only where the
        windows had prefiltered requests."""
        windows = np.asarray(windows, dtype=float).reshape(-1, 3)
        if len(windows) == 0:
            raise ValueError("no measured windows to fit a service time to")
        pairs, docs, seconds = windows[:, 0], windows[:, 1], windows[:, 2]
        columns = {"fixed": np.ones_like(pairs), "pair": pairs}
        if docs.any():
            columns["doc"] = docs
        coef: dict[str, float] = {}
        while columns:
            names = list(columns)
            design = np.column_stack([columns[k] for k in names])
            # relative errors: the noise scales with the window (a ratio), so a small window's
            # few milliseconds weigh as much as a full one's seconds
            scale = 1.0 / np.maximum(seconds, 1e-6)
            solved = np.linalg.lstsq(design * scale[:, None], seconds * scale, rcond=None)[0]
            negative = [k for k, v in zip(names, solved) if v < 0]
            # two windows of one size cannot tell the fixed part from the per-pair part
            if not negative and (len(np.unique(pairs)) > 1 or "fixed" not in names or len(names) == 1):
                coef = dict(zip(names, solved))
                break
            columns.pop(negative[0] if negative else "fixed")
        if coef.get("pair", 0) == 0 and coef.get("fixed", 0) == 0:  # nothing fitted: seconds per pair
            coef = {"pair": float(seconds.sum() / max(pairs.sum(), 1))}
        model = cls(fixed_s=float(coef.get("fixed", 0.0)), per_pair_s=float(coef.get("pair", 0.0)),
                    per_prefiltered_doc_s=float(coef.get("doc", 0.0)), samples=len(windows),
                    max_pairs_seen=int(pairs.max()),
                    overhead_s=None if overhead_s is None else np.asarray(overhead_s, dtype=float))
        fitted = np.array([model.mean_s(p, d) for p, d in zip(pairs, docs)])
        ok = fitted > 0
        model.ratios = seconds[ok] / fitted[ok] if ok.any() else None
        if model.ratios is not None and len(model.ratios) >= 2 * BIN_WINDOWS:
            by_size = np.argsort(pairs[ok], kind="stable")
            chunks = np.array_split(by_size, min(MAX_BINS, len(by_size) // BIN_WINDOWS))
            model.ratio_bins = [(float(pairs[ok][chunk].max()), np.sort(model.ratios[chunk])) for chunk in chunks]
            model.ratio_bins[-1] = (math.inf, model.ratio_bins[-1][1])
        return model


def sample_docs(mix: Mix, n: int, rng: np.random.Generator) -> np.ndarray:
    """Documents per request: a component of the mix by weight, then uniform in its range."""
    weights = np.array([w for w, _, _ in mix], dtype=float)
    pick = rng.choice(len(mix), n, p=weights / weights.sum())
    lo = np.array([lo for _, lo, _ in mix])[pick]
    hi = np.array([hi for _, _, hi in mix])[pick]
    return rng.integers(lo, hi + 1)


def mean_docs(mix: Mix) -> float:
    total = sum(w for w, _, _ in mix)
    return sum(w * (lo + hi) / 2 for w, lo, hi in mix) / total


def arrival_times(rate: float, n: int, rng: np.random.Generator, process: str = "poisson",
                  share: float = 1.0) -> np.ndarray:
    """Arrival times (s) at one replica that gets `share` of a stream of `rate` requests/s.

    ``poisson``: independent callers (exponential gaps; a random share of a Poisson stream
    is Poisson). ``regular``: loadgen's open loop, one request every 1/rate s, of which each
    lands on this replica with probability `share` (its partitions' share of the keys)."""
    if process == "poisson":
        gaps = rng.exponential(1.0 / (rate * share), n)
    elif process == "regular":
        gaps = (rng.geometric(share, n) if share < 1 else np.ones(n)) / rate
    else:
        raise ValueError(f"arrival process {process!r}: poisson or regular")
    return np.cumsum(gaps)


@dataclass
class ReplicaRun:
    """One simulated replica: per request its latency, per window its size and start."""

    latency_s: np.ndarray
    window_requests: np.ndarray
    window_pairs: np.ndarray
    busy_s: float
    span_s: float


def simulate_replica(arrivals: np.ndarray, pairs: np.ndarray, prefiltered_docs: np.ndarray,
                     service: ServiceModel, policy: WindowPolicy, rng: np.random.Generator,
                     servers: int = 1) -> ReplicaRun:
    """Runs the window rules over sorted arrival times; `servers` scoring threads share the
    replica's queue (the worker has one; more is for the textbook M/M/c check)."""
    n = len(arrivals)
    at = arrivals.tolist()
    cum = np.concatenate([[0], np.cumsum(pairs)]).tolist()
    cum_docs = np.concatenate([[0], np.cumsum(prefiltered_docs)]).tolist()
    noise = service.noise(n, rng).tolist()
    finish = np.empty(n)
    free = [0.0] * servers
    heapq.heapify(free)
    sizes, window_pairs = [], []
    max_pairs, window_s, gather_s = policy.max_pairs, policy.window_s, min(policy.gather_s, policy.window_s)
    busy = 0.0
    i = k = 0
    while i < n:
        engine_free = heapq.heappop(free)
        first = at[i]
        gathering = max(engine_free, first)  # the loop asks for a window once the engine is free
        latest = first + window_s
        # gathering ends once no request has come for gather_s, and by `latest` at the latest
        last = bisect.bisect_right(at, gathering, lo=i) - 1
        quiet = min(at[last] + gather_s, latest)
        while last + 1 < n and at[last + 1] < quiet:
            last += 1
            quiet = min(at[last] + gather_s, latest)
        # the request whose arrival brings the queue to max_pairs closes the window early
        fill = bisect.bisect_left(cum, cum[i] + max_pairs, lo=i + 1)
        start = max(gathering, min(quiet, at[fill - 1] if fill <= n else math.inf))
        arrived = bisect.bisect_right(at, start, lo=i)
        fits = bisect.bisect_right(cum, cum[i] + max_pairs, lo=i) - 1
        end = max(i + 1, min(arrived, fits))
        w_pairs = cum[end] - cum[i]
        seconds = service.mean_s(w_pairs, cum_docs[end] - cum_docs[i]) * service.factor(w_pairs, noise[k])
        finish[i:end] = start + seconds
        heapq.heappush(free, start + seconds)
        busy += seconds
        sizes.append(end - i)
        window_pairs.append(w_pairs)
        i, k = end, k + 1
    latency = finish - arrivals + service.overhead(n, rng)
    return ReplicaRun(latency, np.array(sizes), np.array(window_pairs), busy,
                      float(finish.max() - arrivals[0]) if n else 0.0)


def replica_shares(replicas: int, partitions: int) -> list[tuple[int, float]]:
    """(how many replicas, share of the keys each) when `partitions` are spread over
    `replicas` as evenly as Kafka's assignors do; replicas beyond the partitions idle."""
    busy = min(replicas, partitions)
    base, extra = divmod(partitions, busy)
    levels = [(extra, (base + 1) / partitions), (busy - extra, base / partitions)]
    return [(count, share) for count, share in levels if count]


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cdf = np.cumsum(w) / w.sum()
    return float(v[min(np.searchsorted(cdf, q / 100.0), len(v) - 1)])


@dataclass
class SystemPrediction:
    rate: float
    replicas: int
    partitions: int
    stable: bool
    load_over_capacity: float  # busiest replica's arrival rate / its saturated rate
    p50_s: float
    p90_s: float
    p99_s: float
    mean_s: float
    mean_window_requests: float
    levels: list[dict] = field(default_factory=list)


def saturated_rate(service: ServiceModel, policy: WindowPolicy, mix: Mix, rng: np.random.Generator,
                   n: int = 20_000) -> tuple[float, float]:
    """(requests/s, documents/s) one replica serves when its queue never empties: every
    request there at once, windows full."""
    docs = sample_docs(mix, n, rng)
    pairs, pref = policy.pairs(docs)
    run = simulate_replica(np.zeros(n), pairs, pref, service, policy, rng)
    return n / run.busy_s, float(docs.sum()) / run.busy_s


def predict(rate: float, mix: Mix, service: ServiceModel, policy: WindowPolicy, replicas: int,
            partitions: int, rng: np.random.Generator, process: str = "poisson",
            requests_per_level: int = 20_000, capacity_rps: float | None = None) -> SystemPrediction:
    """Latency percentiles over all requests of `replicas` replicas on `partitions`
    partitions at `rate` requests/s. Unstable (a replica's queue grows without bound) when
    the busiest replica's rate reaches its saturated rate."""
    capacity_rps = capacity_rps or saturated_rate(service, policy, mix, rng)[0]
    levels = replica_shares(replicas, partitions)
    load = max(rate * share for _, share in levels) / capacity_rps
    if load >= 1.0:
        return SystemPrediction(rate, replicas, partitions, False, load, math.inf, math.inf, math.inf,
                                math.inf, math.nan)
    values, weights, windows, out_levels = [], [], [], []
    warm = requests_per_level // 10  # the queue starts empty: leave out the first tenth
    for count, share in levels:
        docs = sample_docs(mix, requests_per_level, rng)
        pairs, pref = policy.pairs(docs)
        run = simulate_replica(arrival_times(rate, requests_per_level, rng, process, share), pairs, pref,
                               service, policy, rng)
        kept = run.latency_s[warm:]
        values.append(kept)
        weights.append(np.full(len(kept), count * share / len(kept)))
        windows.append(run.window_requests)
        out_levels.append({"replicas": count, "share": share, "rate": rate * share,
                           "load_over_capacity": rate * share / capacity_rps,
                           "p99_s": float(np.percentile(kept, 99)),
                           "mean_window_requests": float(run.window_requests.mean())})
    v, w = np.concatenate(values), np.concatenate(weights)
    return SystemPrediction(
        rate, replicas, partitions, True, load, weighted_percentile(v, w, 50), weighted_percentile(v, w, 90),
        weighted_percentile(v, w, 99), float((v * w).sum() / w.sum()),
        float(np.mean(np.concatenate(windows))), out_levels)


# --- closed forms, for the textbook checks -------------------------------------------------

def mm1_mean_wait(arrival_rate: float, service_rate: float) -> float:
    """M/M/1: mean time in queue before service, ρ / (μ - λ)."""
    rho = arrival_rate / service_rate
    if rho >= 1:
        return math.inf
    return rho / (service_rate - arrival_rate)


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c (offered load a = λ/μ Erlangs)."""
    if offered >= servers:
        return 1.0
    term, total = 1.0, 1.0
    for k in range(1, servers):
        term *= offered / k
        total += term
    last = term * offered / servers * servers / (servers - offered)
    return last / (total + last)


def mmc_mean_wait(arrival_rate: float, service_rate: float, servers: int) -> float:
    """M/M/c: mean time in queue, C(c, a) / (cμ - λ)."""
    if arrival_rate >= servers * service_rate:
        return math.inf
    return erlang_c(servers, arrival_rate / service_rate) / (servers * service_rate - arrival_rate)
