"""The load generator's core: send requests open- or closed-loop, match answers, measure.

Open loop sends at a fixed rate whatever the service does (what traffic from many
independent clients looks like, and the way to find the rate a service sustains);
closed loop keeps N requests in flight (what a fixed pool of callers does).
"""
from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from engines.corpus import load_passages, queries
from loadgen.client import RerankClient

#: Named document-count distributions: a uniform range, or a mix of ranges with weights.
DISTRIBUTIONS: dict[str, list[tuple[float, int, int]]] = {
    "4-15": [(1.0, 4, 15)],
    "50-100": [(1.0, 50, 100)],
    "100-200": [(1.0, 100, 200)],
    "300-1000": [(1.0, 300, 1000)],
    "mix": [(0.6, 4, 15), (0.25, 50, 100), (0.1, 100, 200), (0.05, 300, 1000)],
}


def parse_distribution(spec: str) -> list[tuple[float, int, int]]:
    """A name above, "LO-HI", or a mix "LO-HI:W,LO-HI:W" (weights need not sum to 1)."""
    if spec in DISTRIBUTIONS:
        return DISTRIBUTIONS[spec]
    parts = []
    for piece in spec.split(","):
        rng, _, weight = piece.partition(":")
        lo, _, hi = rng.partition("-")
        if not (lo.isdigit() and (hi or lo).isdigit()) or int(lo) < 1 or int(hi or lo) < int(lo):
            raise ValueError(f"bad document-count distribution {spec!r}: use a name "
                             f"({', '.join(DISTRIBUTIONS)}), LO-HI, or LO-HI:W,LO-HI:W")
        parts.append((float(weight or 1), int(lo), int(hi or lo)))
    return parts


class RequestFactory:
    """Rerank requests with documents drawn from the corpus of real English passages."""

    def __init__(self, distribution: list[tuple[float, int, int]], seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.passages = load_passages()
        self.queries = queries(500, seed=seed)
        self.distribution = distribution
        self.run_tag = uuid.uuid4().hex[:8]
        self.count = 0

    def documents(self) -> int:
        weights = [w for w, _, _ in self.distribution]
        _, lo, hi = self.rng.choices(self.distribution, weights)[0]
        return self.rng.randint(lo, hi)

    def __call__(self, **extra) -> dict:
        self.count += 1
        n = self.documents()
        docs = self.rng.sample(self.passages, n) if n <= len(self.passages) else \
            [self.rng.choice(self.passages) for _ in range(n)]
        return {"request_id": f"lg-{self.run_tag}-{self.count}", "query": self.rng.choice(self.queries),
                "documents": docs, "top_n": 10, **extra}


@dataclass
class LoadResult:
    mode: str
    sent: int
    answered: int
    lost: int
    duplicates: int
    errors: dict[str, int]
    elapsed_s: float
    requests_per_s: float
    docs_per_s: float
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    timeline: list[tuple[float, float]]  # (seconds since start, latency s) per answered request

    def summary(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "timeline"}
        out["latency_unit"] = "s"
        return out


def run_load(client: RerankClient, factory: RequestFactory, *, rate: float | None = None,
             concurrency: int | None = None, requests: int | None = None, duration_s: float | None = None,
             timeout_s: float = 30.0, show_progress: bool = True, extra: dict | None = None) -> LoadResult:
    """Sends until `requests` are sent or `duration_s` passes, then waits up to `timeout_s`
    for the last answers; anything still unanswered is counted as lost."""
    if (rate is None) == (concurrency is None):
        raise ValueError("give exactly one of rate (open loop) or concurrency (closed loop)")
    if requests is None and duration_s is None:
        raise ValueError("give requests or duration_s")
    extra = extra or {}
    started = time.monotonic()
    sent_ids: list[str] = []
    docs_sent = 0
    total = requests if requests is not None else None
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} answered"),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task("loadgen", total=total, rate="")

        def more() -> bool:
            if requests is not None and len(sent_ids) >= requests:
                return False
            return duration_s is None or time.monotonic() - started < duration_s

        def tick() -> None:
            answered = client.answered()
            elapsed = time.monotonic() - started
            progress.update(task, completed=answered, total=total or max(len(sent_ids), 1),
                            rate=f"{answered / elapsed:.1f} req/s" if elapsed > 0 else "")

        last_tick = 0.0
        while more():
            if rate is not None:
                due = started + len(sent_ids) / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(min(delay, 0.05))
                    continue
            elif client.outstanding() >= concurrency:
                time.sleep(0.002)
                continue
            req = factory(**extra)
            docs_sent += len(req["documents"])
            sent_ids.append(client.send(req))
            if time.monotonic() - last_tick > 0.2:
                tick()
                last_tick = time.monotonic()
        client.flush()
        send_end = time.monotonic()
        while client.outstanding() and time.monotonic() - send_end < timeout_s:
            tick()
            time.sleep(0.1)
        tick()

    snapshot = client.snapshot()
    answered = [snapshot[i] for i in sent_ids if snapshot[i].answers]
    first = [p.answers[0] for p in answered]
    latencies = np.array([a.latency_s for a in first])
    last_answer = max((a.received_at for a in first), default=started)
    elapsed = max(last_answer - started, 1e-9)
    errors = Counter(a.response["error"]["code"] for a in first if a.response.get("status") == "error")
    docs_answered = sum(p.documents for p in answered)

    def pct(q: float) -> float | None:
        return float(np.percentile(latencies, q)) if len(latencies) else None

    return LoadResult(
        mode=f"open loop {rate}/s" if rate is not None else f"closed loop x{concurrency}",
        sent=len(sent_ids), answered=len(answered), lost=len(sent_ids) - len(answered),
        duplicates=sum(len(p.answers) - 1 for p in answered), errors=dict(errors), elapsed_s=elapsed,
        requests_per_s=len(answered) / elapsed, docs_per_s=docs_answered / elapsed,
        p50=pct(50), p90=pct(90), p99=pct(99), max=float(latencies.max()) if len(latencies) else None,
        timeline=sorted((a.received_at - started, a.latency_s) for a in first),
    )


def plot(result: LoadResult, path: str) -> None:
    """Latency percentiles over time (1 s bins) and a latency histogram, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([x for x, _ in result.timeline])
    lat = np.array([y for _, y in result.timeline]) * 1000
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if len(t):
        bins = np.arange(0, np.ceil(t.max()) + 1)
        idx = np.digitize(t, bins)
        for q, style in ((50, "-"), (90, "--"), (99, ":")):
            xs, ys = [], []
            for b in np.unique(idx):
                sel = lat[idx == b]
                xs.append(bins[b - 1])
                ys.append(np.percentile(sel, q))
            ax1.plot(xs, ys, style, label=f"p{q}")
        ax2.hist(lat, bins=50)
    ax1.set(xlabel="time since start (s)", ylabel="latency (ms)", title="Latency percentiles per second")
    ax1.legend()
    ax2.set(xlabel="latency (ms)", ylabel="requests", title=f"Latency histogram ({result.answered} answers)")
    fig.suptitle(f"{result.mode}: {result.requests_per_s:.1f} req/s, {result.docs_per_s:.0f} docs/s, "
                 f"lost {result.lost}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
