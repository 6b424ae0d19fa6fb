"""Engine throughput benchmark: naive sentence-transformers baselines and every engine, side by side.

    python -m loadgen.bench.engine_speed --json out/bench.json [--quick]

On one corpus (standard-library docstring passages, :mod:`engines.corpus`) and the untrained-head
MiniLM-L6 test cross-encoder (:mod:`engines.testmodel`; same architecture and cost as
ms-marco-MiniLM-L-6-v2, scores are not relevance), in one process:

* ``naive_per_request_pairs_per_s``: ``CrossEncoder.predict`` on each request alone (4-15 documents).
* ``naive_batched_pairs_per_s``: ``CrossEncoder.predict`` on all pairs at once, ``batch_size=32``.
* ``engines``: pairs/s of each engine through ``Reranker.rerank`` on the same requests, grouped in
  windows of up to 512 pairs (how the worker of 0.2 grouped them); ``engine_details`` adds
  per-round figures, window latency, tokenize share and padding. The default engine also runs
  the same requests the worker's way, through :class:`engines.scheduler.Scheduler` (``<engine>
  scheduler``: requests submitted while fewer than 1,024 of their pairs are pending, as in a
  saturated worker, one micro-batch per step; "window p50" is then a step's).
* ``hybrid_1000`` and ``hybrid_2000``: one request of 1,000 (2,000) documents, cross-encoded in
  full vs prefiltered to 100 by each first stage (``static``, ``bm25``, ``client``,
  ``bi-encoder``, ``static+bm25``), side by side, with nothing cached (cold: new documents; the
  bi-encoder's embedding cache emptied) and with the same documents again under another query
  (warm: only the bi-encoder keeps anything across requests). Per method: full time / hybrid
  time, and where the hybrid's time goes (the first stage, its tokenizing, which the
  cross-encoder reuses, and the cross-encoder). ``bm25`` and ``static`` remember the words they
  have met, as a worker's do after its first requests: the first stage at its first sight of the
  documents' words is reported apart (:func:`bench_hybrid`). The corpus has ~1,500 passages: past that,
  documents are made by joining the first half of one passage to the second half of another
  (:func:`hybrid_documents`), all distinct.
* ``tokenize_share``: fraction of the default engine's time spent tokenizing and padding.

Everything is measured side by side in rounds: each round draws its own requests and runs them
through every contender in turn, and a contender's figure is its best round (other processes on a
small shared machine can only slow a round down). Engines are warmed up on other requests than the
measured ones, so kernel caches for batch shapes are only as warm as real traffic would make them.
The first build of an engine exports and quantizes the model into the cache; ``build_s`` reports
that separately from the throughput.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from engines import EngineConfig, RerankJob, build_reranker
from engines.config import resolve_precision
from engines.corpus import load_passages, queries
from engines.scheduler import Scheduler
from engines.testmodel import ensure_test_model
from loadgen.bench.machine import machine
from loadgen.bench.report import command, table, write_json
from vocabulary import PREFILTER_METHODS

# Read by huggingface_hub and tokenizers when they are first imported (by the engines, lazily).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WINDOW_MAX_PAIRS = 512
#: Pairs a saturated worker holds pending (as its windows of 0.2 held two windows' worth).
SCHEDULER_IN_FLIGHT_PAIRS = 1024
DEFAULT_ENGINE = ("openvino", "auto")  # the worker's default; "auto" resolves by CPU flags
FULL_ENGINES = [
    ("openvino", "int8"),
    ("openvino", "bf16"),
    ("openvino", "fp32"),
    ("onnx", "int8"),
    ("onnx", "fp32"),
    ("torch", "bf16"),
    ("torch", "fp32"),
    ("bi-encoder", "int8"),
]
QUICK_ENGINES = [DEFAULT_ENGINE, ("bi-encoder", "auto")]


def make_requests(n: int, seed: int, passages: list[str]) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    return [(query, rng.sample(passages, rng.randint(4, 15))) for query in queries(n, seed=seed)]


def make_rounds(quick: bool, passages: list[str]) -> tuple[list, list]:
    """The measured rounds (2 of 20 requests when ``quick``, else 3 of 80) and the warm-up requests,
    drawn with fixed seeds so that every benchmark that uses them measures the same requests."""
    n_rounds, per_round = (2, 20) if quick else (3, 80)
    rounds = [make_requests(per_round, seed=7 + r, passages=passages) for r in range(n_rounds)]
    return rounds, make_requests(max(10, per_round // 2), seed=100, passages=passages)


def engine_name(engine: str, precision: str) -> str:
    """The name ``Reranker.engine_name`` will have on the CPU, e.g. ``openvino-fp32`` for ``auto``
    on a CPU without VNNI: known before building it."""
    return f"{engine}-{resolve_precision(precision, engine, 'cpu')}"


def windows(requests, max_pairs: int = WINDOW_MAX_PAIRS):
    """Group requests into windows of up to ``max_pairs`` pairs, as the worker of 0.2 did."""
    window, pairs = [], 0
    for request in requests:
        if window and pairs + len(request[1]) > max_pairs:
            yield window
            window, pairs = [], 0
        window.append(request)
        pairs += len(request[1])
    if window:
        yield window


class NaiveContender:
    """sentence-transformers as a user would call it: ``CrossEncoder.predict``."""

    def __init__(self, model_path: str, per_request: bool):
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(model_path, device="cpu")
        self.per_request = per_request
        self.model.predict([("warm up", "the model")], show_progress_bar=False)

    def measure(self, requests) -> dict:
        started = time.perf_counter()
        if self.per_request:
            for query, docs in requests:
                self.model.predict([(query, d) for d in docs], batch_size=32, show_progress_bar=False)
        else:
            pairs = [(query, d) for query, docs in requests for d in docs]
            self.model.predict(pairs, batch_size=32, show_progress_bar=False)
        return {"pairs_per_s": sum(len(d) for _, d in requests) / (time.perf_counter() - started)}


class EngineContender:
    """An engine through ``Reranker.rerank``, fed windows of up to 512 pairs. ``options`` are more
    :class:`engines.EngineConfig` fields (``threads``, ``cpu_pinning``)."""

    def __init__(self, engine: str, precision: str, model_path: str, warm, **options):
        started = time.perf_counter()
        self.reranker = build_reranker(EngineConfig(engine=engine, model=model_path, precision=precision, device="cpu", **options))
        self.reranker.warmup()
        self.build_s = time.perf_counter() - started
        self.name = self.reranker.engine_name
        self.measure(warm)  # first sight of typical batch shapes, on requests that are not measured

    def measure(self, requests) -> dict:
        return measure_windows(self.reranker, requests)


def measure_windows(reranker, requests) -> dict:
    """``requests`` through ``reranker.rerank`` in windows of up to 512 pairs: pairs/s, windows,
    their p50, the tokenize share and the padding."""
    reranker.reset_stats()
    latencies = []
    started = time.perf_counter()
    for window in windows(requests):
        t = time.perf_counter()
        reranker.rerank([RerankJob(q, docs, prefilter=False) for q, docs in window])
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    stats = reranker.stats()
    stage = stats.get("cross") or stats.get("bi_encoder")
    return {
        "pairs_per_s": sum(len(d) for _, d in requests) / elapsed,
        "windows": len(latencies),
        "window_p50_ms": 1000 * sorted(latencies)[len(latencies) // 2],
        "tokenize_share": stage["tokenize_s"] / stats["rerank_s"],
        "padding_overhead": stage["padded_tokens"] / max(1, stage["real_tokens"]) - 1,
    }


class SchedulerContender:
    """``reranker``'s engine the worker's way: jobs submitted to a :class:`Scheduler` while fewer
    than ``in_flight_pairs`` of their pairs are pending (a saturated worker's backlog), then one
    step at a time until every job is done."""

    def __init__(self, reranker, in_flight_pairs: int = SCHEDULER_IN_FLIGHT_PAIRS):
        self.reranker = reranker
        self.name = f"{reranker.engine_name} scheduler"
        self.in_flight_pairs = in_flight_pairs
        self.build_s = 0.0  # the engine's, counted once in its own row

    def measure(self, requests) -> dict:
        self.reranker.reset_stats()
        jobs = (RerankJob(q, docs, prefilter=False) for q, docs in requests)
        started = time.perf_counter()
        _, steps = run_saturated(self.reranker, jobs, self.in_flight_pairs)
        elapsed = time.perf_counter() - started
        stage = self.reranker.stats()["cross"]
        return {
            "pairs_per_s": sum(len(d) for _, d in requests) / elapsed,
            "windows": len(steps),
            "window_p50_ms": 1000 * sorted(steps)[len(steps) // 2],
            "tokenize_share": stage["tokenize_s"] / elapsed,
            "padding_overhead": stage["padded_tokens"] / max(1, stage["real_tokens"]) - 1,
            "path": "scheduler",
        }


def run_saturated(reranker, jobs: Iterator[RerankJob], in_flight_pairs: int = SCHEDULER_IN_FLIGHT_PAIRS,
                  seconds: float | None = None) -> tuple[int, list[float]]:
    """Jobs through a :class:`Scheduler` of ``reranker`` as a saturated worker runs them: submitted
    while fewer than ``in_flight_pairs`` of their pairs are pending, one step at a time, until
    ``jobs`` run out and every job is done (or ``seconds`` have passed). Returns the documents of
    the jobs done and each step's seconds."""
    scheduler = Scheduler(reranker)
    live: dict[int, tuple[int, int]] = {}  # key: (documents, pairs)
    pending = documents = 0
    steps: list[float] = []
    keys = itertools.count()
    stop_at = None if seconds is None else time.perf_counter() + seconds
    exhausted = False
    while (not exhausted or scheduler.busy) and (stop_at is None or time.perf_counter() < stop_at):
        while not exhausted and pending < in_flight_pairs:
            job = next(jobs, None)
            if job is None:
                exhausted = True
                break
            key, plan = next(keys), reranker.plan(job)
            scheduler.submit(key, job, plan)
            live[key] = (len(job.documents), plan.pairs)
            pending += plan.pairs
        tick = time.perf_counter()
        step = scheduler.step()
        steps.append(time.perf_counter() - tick)
        for finished in step.finished:
            done_documents, done_pairs = live.pop(finished.key)
            documents += done_documents
            pending -= done_pairs
    return documents, steps


def measure_rounds(contenders: dict, rounds: list) -> dict:
    """Each round's requests go through every contender in turn; a contender's figure is its best
    round. Other processes on a small shared machine slow some rounds down; they cannot make
    one faster, so the best round is the closest to the machine's real capacity."""
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    for requests in rounds:
        for name, contender in contenders.items():
            results[name].append(contender.measure(requests))
    best = {}
    for name, runs in results.items():
        top = max(runs, key=lambda r: r["pairs_per_s"])
        best[name] = {**top, "rounds_pairs_per_s": [round(r["pairs_per_s"], 1) for r in runs]}
    return best


def _hybrid_run(reranker, job: RerankJob) -> dict:
    """One request through ``reranker``: its seconds and where they went."""
    reranker.reset_stats()
    started = time.perf_counter()
    [outcome] = reranker.rerank([job])
    seconds = time.perf_counter() - started
    stats = reranker.stats()
    first = sum(stage["seconds"] for stage in stats["first_stages"].values())
    cross = stats["cross"]
    return {
        "s": seconds,
        "prefilter_s": first,
        "prefilter_tokenize_s": stats["first_stage_tokenize_s"],
        "cross_encoder_s": cross["total_s"],
        "cross_encoder_tokenize_s": cross["tokenize_s"],
        "cross_encoded": int(outcome.cross_encoder_scored),
        "prefiltered": bool(outcome.prefiltered),
    }


#: Request sizes of the hybrid test (``hybrid_<n>`` in the report).
HYBRID_DOCUMENTS = (1000, 2000)


def hybrid_documents(passages: list[str], n: int, rng: random.Random) -> list[str]:
    """``n`` distinct documents: a sample of ``passages``, and past their number, the first half of
    one passage joined to the second half of another (a passage's length, the corpus's words)."""
    if n <= len(passages):
        return rng.sample(passages, n)
    documents = rng.sample(passages, len(passages))
    seen = set(documents)
    while len(documents) < n:
        first, second = rng.sample(passages, 2)
        spliced = f"{first[: len(first) // 2]} {second[len(second) // 2 :]}"
        if spliced not in seen:
            seen.add(spliced)
            documents.append(spliced)
    return documents


def bench_hybrid(reranker, passages: list[str], seed: int, repeats: int, methods=PREFILTER_METHODS,
                 documents: int = 1000) -> dict:
    """One request of ``documents`` documents: in full, and prefiltered to ``prefilter_keep`` by
    each first stage, cold (documents never seen: the bi-encoder's embedding cache emptied) and
    warm (the same documents with another query). Best of ``repeats`` rounds; every round runs
    full and each method in turn, so they share the machine's state.

    The word-reading stages (``bm25``, ``static``) remember each distinct word they have met, as a
    worker's do after its first requests: before the rounds, each method ranks the documents once
    under a query of its own, and what that first sight of their words cost its first stage is
    reported apart (``first_sight_prefilter_s``); cold then means new documents, not new words.
    Methods go in order, so ``static+bm25``'s first sight follows its parts' (the words are known:
    it measures the fusion, not the learning)."""
    rng = random.Random(seed)
    docs = hybrid_documents(passages, documents, rng)
    # The caller's own first-stage scores, for the client method (any finite numbers do for speed).
    client_scores = [rng.random() for _ in docs]
    full_runs: list[dict] = []
    runs: dict[str, dict[str, list[dict]]] = {m: {"cold": [], "warm": []} for m in methods}
    names = iter(queries(1 + len(methods) + 2 * len(methods) * repeats + repeats, seed=seed + 1))
    first_sight = {}
    for method in methods:
        if reranker._bi_encoder is not None:
            reranker.bi_encoder.clear_cache()
        job = RerankJob(next(names), docs, prefilter=True, method=method, scores=client_scores)
        first_sight[method] = _hybrid_run(reranker, job)["prefilter_s"]
    for attempt in range(repeats):
        full_runs.append(_hybrid_run(reranker, RerankJob(next(names), docs, prefilter=False)))
        for method in methods:
            if reranker._bi_encoder is not None:
                reranker.bi_encoder.clear_cache()
            for state in ("cold", "warm"):
                job = RerankJob(next(names), docs, prefilter=True, method=method, scores=client_scores)
                run = _hybrid_run(reranker, job)
                assert run["prefiltered"], method
                runs[method][state].append(run)
    full = min(full_runs, key=lambda r: r["s"])
    out: dict = {
        "documents": len(docs),
        "kept": reranker.config.prefilter_keep,
        "full_s": full["s"],
        "full_tokenize_s": full["cross_encoder_tokenize_s"],
        "repeats": repeats,
        "methods": {},
    }
    for method in methods:
        cold = min(runs[method]["cold"], key=lambda r: r["s"])
        warm = min(runs[method]["warm"], key=lambda r: r["s"])
        out["methods"][method] = {
            "cold_s": cold["s"],
            "warm_s": warm["s"],
            "speedup": full["s"] / cold["s"],
            "speedup_warm": full["s"] / warm["s"],
            "prefilter_share": cold["prefilter_s"] / cold["s"],
            "prefilter_share_warm": warm["prefilter_s"] / warm["s"],
            "first_sight_prefilter_s": first_sight[method],
            "cold": {key: value for key, value in cold.items() if key != "prefiltered"},
            "warm": {key: value for key, value in warm.items() if key != "prefiltered"},
        }
    # The figures of the worker's default method under the keys earlier reports used.
    default = reranker.config.prefilter_method
    if default in out["methods"]:
        row = out["methods"][default]
        out.update(default_method=default, prefilter_s=row["cold_s"], prefilter_warm_s=row["warm_s"],
                   speedup=row["speedup"], speedup_warm=row["speedup_warm"])
    return out


def _hybrid_rows(hybrid: dict) -> list[tuple[str, ...]]:
    """Per first stage: cold, full ÷ cold, warm, full ÷ warm, prefilter share, the cold run's parts,
    and the first stage at its first sight of the documents' words."""
    return [(method, f"{row['cold_s']:.3f} s", f"{row['speedup']:.2f}x", f"{row['warm_s']:.3f} s",
             f"{row['speedup_warm']:.2f}x", f"{100 * row['prefilter_share']:.1f}%",
             f"{1000 * row['cold']['prefilter_s']:.0f} ms", f"{1000 * row['cold']['prefilter_tokenize_s']:.0f} ms",
             f"{1000 * row['cold']['cross_encoder_s']:.0f} ms", f"{1000 * row.get('first_sight_prefilter_s', 0):.0f} ms")
            for method, row in hybrid["methods"].items()]


def _hybrid_lines(report: dict) -> list[str]:
    lines: list[str] = []
    for key in [k for k in report if k.startswith("hybrid_") and k != "hybrid_engine"]:
        h = report[key]
        lines += [f"Hybrid, one request of {h['documents']} documents, {report['hybrid_engine']}, keep {h['kept']}: "
                  f"full {h['full_s']:.2f} s (tokenizing {1000 * h['full_tokenize_s']:.0f} ms).", "",
                  *table(["first stage", "cold", "full ÷ cold", "warm", "full ÷ warm", "prefilter share (cold)",
                          "first stage", "its tokenizing", f"cross-encoder ({h['kept']} pairs)",
                          "first stage, words never seen"], _hybrid_rows(h), align="lrrrrrrrrr"), ""]
    return lines


def print_report(report: dict) -> None:
    console = Console(width=150)  # wide enough for the table when not on a terminal
    m = report["machine"]
    console.print(
        f"[bold]Engines[/] on {m['cpu_model']} x{m['cpus']} (load at start {m['load_average_at_start'][0]:.2f}); "
        f"model: {report['model']['label']}"
    )
    naive_r, naive_b = report["naive_per_request_pairs_per_s"], report["naive_batched_pairs_per_s"]
    engines = Table("engine", "pairs/s (best round)", "rounds", "vs naive per request", "vs naive batched",
                    "window / step p50", "tokenize", "padding", "build")
    engines.add_row("naive CrossEncoder.predict per request", f"{naive_r:.1f}", "", "1.00x", f"{naive_r / naive_b:.2f}x", "", "", "", "")
    engines.add_row("naive CrossEncoder.predict batched (32)", f"{naive_b:.1f}", "", f"{naive_b / naive_r:.2f}x", "1.00x", "", "", "", "")
    for name, row in report["engine_details"].items():
        engines.add_row(
            name,
            f"{row['pairs_per_s']:.1f}",
            " ".join(f"{x:.0f}" for x in row["rounds_pairs_per_s"]),
            f"{row['pairs_per_s'] / naive_r:.2f}x",
            f"{row['pairs_per_s'] / naive_b:.2f}x",
            f"{row['window_p50_ms']:.0f} ms",
            f"{100 * row['tokenize_share']:.1f}%",
            f"{100 * row['padding_overhead']:.1f}%",
            f"{row['build_s']:.1f} s",
        )
    console.print(engines)
    for key in [k for k in report if k.startswith("hybrid_") and k != "hybrid_engine"]:
        h = report[key]
        hybrid = Table("first stage", "cold", "full ÷ cold", "warm", "full ÷ warm", "prefilter share", "first stage",
                       "its tokenizing", "cross-encoder", "first stage, new words",
                       title=f"hybrid: 1 request x {h['documents']} documents, {report['hybrid_engine']}, "
                             f"keep {h['kept']}; full {h['full_s']:.2f} s")
        for row in _hybrid_rows(h):
            hybrid.add_row(*row)
        console.print(hybrid)
    r = report["ratios"]
    console.print(
        f"best CPU cross-encoder engine {r['best_engine']}: {r['best_vs_naive_per_request']:.2f}x naive per request, "
        f"{r['best_vs_naive_batched']:.2f}x naive batched; tokenize share {100 * report['tokenize_share']:.1f}%"
    )


def markdown(report: dict) -> str:
    """The figures as a Markdown table, for BENCHMARKS.md."""
    naive_r, naive_b = report["naive_per_request_pairs_per_s"], report["naive_batched_pairs_per_s"]
    rows = [("naive `CrossEncoder.predict`, each request alone", f"{naive_r:.1f}", "1.00x", f"{naive_r / naive_b:.2f}x",
             "", "", ""),
            ("naive `CrossEncoder.predict`, all pairs, batch_size=32", f"{naive_b:.1f}", f"{naive_b / naive_r:.2f}x",
             "1.00x", "", "", "")]
    rows += [(name, f"{row['pairs_per_s']:.1f}", f"{row['pairs_per_s'] / naive_r:.2f}x",
              f"{row['pairs_per_s'] / naive_b:.2f}x", f"{row['window_p50_ms']:.0f} ms",
              f"{100 * row['tokenize_share']:.1f}%", f"{100 * row['padding_overhead']:.1f}%")
             for name, row in report["engine_details"].items()]
    lines = table(["engine", "pairs/s", "vs naive per request", "vs naive batched", "window / step p50", "tokenize",
                   "padding"], rows, align="lrrrrrr")
    return "\n".join([*lines, "", *_hybrid_lines(report)])


def run(quick: bool, engines_wanted: list[tuple[str, str]] | None = None, hybrid_methods=PREFILTER_METHODS) -> dict:
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    model_path = str(ensure_test_model())
    passages = load_passages()
    rounds, warm = make_rounds(quick, passages)
    report: dict = {
        "command": command("loadgen.bench.engine_speed"),
        "quick": quick,
        "machine": machine(),
        "model": {
            "path": model_path,
            "label": "test-cross-encoder-minilm-l6: MiniLM-L6-H384 BertForSequenceClassification with an "
            "UNTRAINED head (same architecture/cost as cross-encoder/ms-marco-MiniLM-L-6-v2; scores are not relevance)",
            "untrained_head": True,
        },
        "workload": {
            "rounds": len(rounds),
            "requests_per_round": len(rounds[0]),
            "pairs_per_round": [sum(len(d) for _, d in r) for r in rounds],
            "documents_per_request": "4-15",
            "window_max_pairs": WINDOW_MAX_PAIRS,
            "corpus": "Python standard-library docstring passages (engines.corpus)",
            "method": "every contender runs each round's requests in turn; figures are the best round",
        },
    }
    contenders: dict = {
        "naive_per_request": NaiveContender(model_path, per_request=True),
        "naive_batched": NaiveContender(model_path, per_request=False),
    }
    builds = {}
    for engine, precision in engines_wanted or (QUICK_ENGINES if quick else FULL_ENGINES):
        contender = EngineContender(engine, precision, model_path, warm)
        contenders[contender.name] = contender
        builds[contender.name] = contender.build_s
        if (engine, precision) == DEFAULT_ENGINE:
            scheduled = SchedulerContender(contender.reranker)
            scheduled.measure(warm)
            contenders[scheduled.name] = scheduled
            builds[scheduled.name] = 0.0
    best = measure_rounds(contenders, rounds)

    naive = {"per_request": best.pop("naive_per_request"), "batched": best.pop("naive_batched")}
    naive_r, naive_b = naive["per_request"]["pairs_per_s"], naive["batched"]["pairs_per_s"]
    report["naive_per_request_pairs_per_s"] = naive_r
    report["naive_batched_pairs_per_s"] = naive_b
    report["naive_rounds_pairs_per_s"] = {key: row["rounds_pairs_per_s"] for key, row in naive.items()}
    details = {name: {**row, "build_s": builds[name]} for name, row in best.items()}
    report["engines"] = {name: row["pairs_per_s"] for name, row in details.items()}
    report["engine_details"] = details
    cross = {name: row for name, row in details.items()
             if not name.startswith("bi-encoder") and row.get("path") != "scheduler"}
    top = max(cross, key=lambda name: cross[name]["pairs_per_s"])
    default_name = engine_name(*DEFAULT_ENGINE)
    report["default_engine"] = default_name
    report["tokenize_share"] = details.get(default_name, details[top])["tokenize_share"]
    report["ratios"] = {
        "best_engine": top,
        "best_vs_naive_per_request": cross[top]["pairs_per_s"] / naive_r,
        "best_vs_naive_batched": cross[top]["pairs_per_s"] / naive_b,
    }
    if default_name in contenders:
        hybrid = contenders[default_name].reranker
    else:
        hybrid = EngineContender(*DEFAULT_ENGINE, model_path, warm[:2]).reranker
    report["hybrid_engine"] = hybrid.engine_name
    for documents in HYBRID_DOCUMENTS[:1] if quick else HYBRID_DOCUMENTS:
        report[f"hybrid_{documents}"] = bench_hybrid(hybrid, passages, seed=11, repeats=1 if quick else 3,
                                                     methods=hybrid_methods, documents=documents)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["elapsed_s"] = time.perf_counter() - started
    return report


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__.split("\n\n")[0])
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the results here")
@click.option("--quick", is_flag=True, help="fewer requests and engines (under a minute)")
@click.option("--engines", "engines_text", help="comma-separated engine:precision list, e.g. openvino:int8,onnx:fp32")
@click.option("--markdown", "show_markdown", is_flag=True, help="also print the figures as a Markdown table")
@click.option("--hybrid-methods", default=",".join(PREFILTER_METHODS),
              help="first stages of the hybrid tests (default: all)")
def main(json_path: Path | None, quick: bool, engines_text: str | None, show_markdown: bool, hybrid_methods: str) -> None:
    wanted = [tuple(item.split(":", 1)) for item in engines_text.split(",")] if engines_text else None
    methods = tuple(m.strip() for m in hybrid_methods.split(",") if m.strip())
    unknown = sorted(set(methods) - set(PREFILTER_METHODS))
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; known: {', '.join(PREFILTER_METHODS)}", param_hint="--hybrid-methods")
    report = run(quick, wanted, methods)
    print_report(report)
    if show_markdown:
        print(markdown(report))
    if write_json(json_path, report):
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
