"""The load generator's core: send requests open- or closed-loop, match answers, measure.

Open loop sends at a fixed rate whatever the service does (what traffic from many
independent clients looks like, and the way to find the rate a service sustains);
closed loop keeps N requests in flight (what a fixed pool of callers does).

Every answer's latency is split into the parts of ``BREAKDOWN`` (see there for what each
measures and on which clock), from the answer's ``meta`` and the two records' timestamps.
"""
from __future__ import annotations

import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from engines.corpus import load_passages, queries
from loadgen.client import Answer, RerankClient, SentRequest
from loadgen.distributions import DISTRIBUTIONS, Mix, parse_distribution  # noqa: F401 (re-exported)

class RequestFactory:
    """Rerank requests with documents drawn from the corpus of real English passages."""

    def __init__(self, distribution: list[tuple[float, int, int]], seed: int = 0,
                 document_words: int | None = None) -> None:
        """``document_words``: each document that many words of passages run together (a long
        page, for chunking); ``None``: one passage each (40-80 words)."""
        self.rng = random.Random(seed)
        self.passages = load_passages()
        self.queries = queries(500, seed=seed)
        self.distribution = distribution
        self.document_words = document_words
        self.words = " ".join(self.passages).split() if document_words else []
        self.run_tag = uuid.uuid4().hex[:8]
        self.count = 0

    def long_document(self) -> str:
        start = self.rng.randrange(max(1, len(self.words) - self.document_words))
        return " ".join(self.words[start:start + self.document_words])

    def documents(self) -> int:
        weights = [w for w, _, _ in self.distribution]
        _, lo, hi = self.rng.choices(self.distribution, weights)[0]
        return self.rng.randint(lo, hi)

    def __call__(self, **extra) -> dict:
        self.count += 1
        n = self.documents()
        if self.document_words:
            docs = [self.long_document() for _ in range(n)]
        else:
            docs = self.rng.sample(self.passages, n) if n <= len(self.passages) else \
                [self.rng.choice(self.passages) for _ in range(n)]
        return {"request_id": f"lg-{self.run_tag}-{self.count}", "query": self.rng.choice(self.queries),
                "documents": docs, "top_n": 10, **extra}


@dataclass(frozen=True)
class Part:
    key: str
    label: str
    measures: str
    clock: str  # whose clock: "worker" is the worker's monotonic clock (meta's durations),
    # "worker + client wall" a difference of the answer record's timestamp and the client's
    # time.time(), "client" the client's monotonic clock


#: One answer's latency, part by part, in the order a request travels. The worker's own
#: parts come from the answer's meta (durations on the worker's monotonic clock); the
#: others from the client's stamps and the answer record's timestamp, which the worker's
#: producer (aiokafka) sets from the worker's wall clock when it takes the answer (topic
#: timestamps are CreateTime, Kafka's default). Wall clocks agree here because client and
#: worker share a machine; on two machines the two cross-clock parts carry their offset
#: (one up, one down by the same amount). Record timestamps are whole milliseconds.
BREAKDOWN = [
    Part("to_broker_ms", "client → broker",
         "produce() until the broker acknowledged the request (librdkafka's delivery latency; "
         "includes the producer's linger.ms of 2)", "client (librdkafka)"),
    Part("to_worker_ms", "broker → worker",
         "the rest of the way in: waiting in Kafka for the worker's fetch, faust's buffers, "
         "parsing; also the worker handing the finished answer to its producer "
         "(= answer record timestamp - total_ms - the request's ack time)",
         "worker + client wall"),
    Part("queue_ms", "waiting for the engine",
         "meta.queue_ms: taken from the stream until the engine began on it (requests ahead of "
         "it in the scheduler's order, backpressure)", "worker"),
    Part("inference_ms", "inference", "meta.inference_ms: from the engine's first work on it until its last "
         "pair was scored (micro-batches shared with other requests included)", "worker"),
    Part("answering_ms", "building the answer", "meta.total_ms - queue_ms - inference_ms", "worker"),
    Part("to_client_ms", "worker → client",
         "answer record timestamp until the client's poll() returned it: the worker's producer, "
         "the broker, the client's fetch", "worker + client wall"),
    Part("end_to_end_ms", "end to end", "the client's send until the answer was polled", "client"),
]
#: end to end minus the sum of the other parts: about 0 when the parts account for all
#: of it (what is left is wall vs monotonic clock and millisecond rounding)
UNACCOUNTED = "unaccounted_ms"


def answer_breakdown(pending: SentRequest, answer: Answer) -> dict[str, float] | None:
    """The parts of one answer's latency (ms), or None for an answer without them (an
    error answer has no meta; a request without a delivery report or an answer record
    without a timestamp cannot be placed between client and worker)."""
    meta = answer.response.get("meta") if answer.response.get("status") == "ok" else None
    if not isinstance(meta, dict) or pending.to_broker_s is None or answer.record_timestamp is None:
        return None
    try:
        queue_ms, inference_ms, total_ms = (float(meta[k]) for k in ("queue_ms", "inference_ms", "total_ms"))
    except (KeyError, TypeError, ValueError):
        return None
    to_broker_ms = pending.to_broker_s * 1000
    answer_ts_ms = answer.record_timestamp[1]
    parts = {
        "to_broker_ms": to_broker_ms,
        "to_worker_ms": answer_ts_ms - total_ms - (pending.sent_wall * 1000 + to_broker_ms),
        "queue_ms": queue_ms,
        "inference_ms": inference_ms,
        "answering_ms": total_ms - queue_ms - inference_ms,
        "to_client_ms": answer.received_wall * 1000 - answer_ts_ms,
        "end_to_end_ms": answer.latency_s * 1000,
    }
    parts[UNACCOUNTED] = parts["end_to_end_ms"] - sum(v for k, v in parts.items() if k != "end_to_end_ms")
    return parts


def summarize_breakdown(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50, p99 and mean of each part over the answers that have a breakdown. Percentiles
    of parts do not add up to the end-to-end percentile; means do."""
    out = {}
    for key in [p.key for p in BREAKDOWN] + [UNACCOUNTED]:
        values = np.array([r[key] for r in rows])
        if len(values):
            out[key] = {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
                        "mean_ms": float(values.mean())}
    return out


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
    # part key -> {p50_ms, p99_ms, mean_ms} over the answers with a breakdown (see BREAKDOWN)
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    breakdown_answers: int = 0
    # per first answer: request_id, documents, sent_s (since start) and the parts (ms)
    per_answer: list[dict] = field(default_factory=list)
    # what measuring cost loadgen itself (CPU of the process and of the receiving thread)
    client_overhead: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """Every figure except the per-answer lists (timeline, per_answer)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("timeline", "per_answer")}
        out["latency_unit"] = "s"
        out["breakdown_parts"] = {p.key: {"label": p.label, "measures": p.measures, "clock": p.clock}
                                  for p in BREAKDOWN}
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
    # A thread that wants the GIL waits up to the switch interval (5 ms by default) for a
    # busy one: shorter, the receiving thread stamps an answer promptly while this one
    # builds requests. Put back afterwards.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, 0.0005))
    try:
        return _run_load(client, factory, rate=rate, concurrency=concurrency, requests=requests,
                         duration_s=duration_s, timeout_s=timeout_s, show_progress=show_progress, extra=extra)
    finally:
        sys.setswitchinterval(switch_interval)


def _run_load(client: RerankClient, factory: RequestFactory, *, rate: float | None, concurrency: int | None,
              requests: int | None, duration_s: float | None, timeout_s: float, show_progress: bool,
              extra: dict) -> LoadResult:
    stats = client.receive_stats
    receive_cpu0, polls0, messages0, handling0 = stats.cpu_s, stats.polls, stats.messages, stats.handling_s
    process_cpu0 = time.process_time()
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
                # woken by the answer itself, so the next request goes out at once
                client.wait_outstanding_below(concurrency, 0.05)
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

    measured_s = time.monotonic() - started
    process_cpu_s = time.process_time() - process_cpu0
    snapshot = client.snapshot()
    answered = [snapshot[i] for i in sent_ids if snapshot[i].answers]
    first = [p.answers[0] for p in answered]
    per_answer = []
    for request_id in sent_ids:
        pending = snapshot[request_id]
        if not pending.answers:
            continue
        parts = answer_breakdown(pending, pending.answers[0])
        per_answer.append({"request_id": request_id, "documents": pending.documents,
                           "sent_s": pending.sent_at - started, "latency_ms": pending.answers[0].latency_s * 1000,
                           **(parts or {})})
    with_parts = [row for row in per_answer if UNACCOUNTED in row]
    messages = stats.messages - messages0
    client_overhead = {
        "process_cpu_s": process_cpu_s,
        "process_cpu_share": process_cpu_s / measured_s,
        "receive_thread_cpu_s": stats.cpu_s - receive_cpu0,
        "receive_thread_cpu_share": (stats.cpu_s - receive_cpu0) / measured_s,
        "polls": stats.polls - polls0,
        "messages": messages,
        "handling_us_mean": (stats.handling_s - handling0) / messages * 1e6 if messages else 0.0,
        "handling_us_max": stats.handling_max_s * 1e6,
    }
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
        breakdown=summarize_breakdown(with_parts), breakdown_answers=len(with_parts), per_answer=per_answer,
        client_overhead=client_overhead,
    )


def compare_with_plain(result: LoadResult, snapshot: dict[str, SentRequest], arrivals: dict[str, float]) -> dict:
    """loadgen's latencies beside a plain per-message reader's (loadgen.plain_consumer) for
    the same answers, both from loadgen's send stamp: p50/p99 of each, and the per-answer
    gap between loadgen's arrival stamp and the plain reader's (positive: loadgen later)."""
    ours, plain, gap = [], [], []
    for row in result.per_answer:
        arrived = arrivals.get(row["request_id"])
        if arrived is None:
            continue
        pending = snapshot[row["request_id"]]
        ours.append(pending.answers[0].latency_s * 1000)
        plain.append((arrived - pending.sent_at) * 1000)
        gap.append((pending.answers[0].received_at - arrived) * 1000)
    out: dict[str, float | int | None] = {"answers_compared": len(ours),
                                          "plain_missed": len(result.per_answer) - len(ours)}
    for name, values in (("loadgen", ours), ("plain", plain), ("arrival_gap", gap)):
        for q in (50, 99):
            out[f"{name}_p{q}_ms"] = float(np.percentile(values, q)) if values else None
    out["arrival_gap_max_ms"] = float(max(gap)) if gap else None
    out["p50_difference_ms"] = out["loadgen_p50_ms"] - out["plain_p50_ms"] if ours else None
    out["p99_difference_ms"] = out["loadgen_p99_ms"] - out["plain_p99_ms"] if ours else None
    return out


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
