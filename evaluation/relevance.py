"""``python -m evaluation``: relevance quality and speed of every reranking strategy, in one run.

For each test query of a BEIR-layout dataset, a first stage proposes candidates (a TREC run file,
or the bi-encoder's top ``--depth`` over the whole corpus); every strategy then reorders those
candidates through the real engines (:func:`engines.build_reranker`):

=================  ==========================================================================
bi-encoder         cosine of all-MiniLM-L6-v2 embeddings only (no cross-encoder)
torch-fp32         the cross-encoder in PyTorch, fp32: the **reference** for retention
onnx-fp32          ONNX Runtime, fp32 (fused graph)
onnx-int8          ONNX Runtime, dynamic int8
openvino-int8      OpenVINO, NNCF static int8
prefilter-K        the bi-encoder keeps the best K candidates, the cross-encoder
                   (``--prefilter-engine``, default onnx-fp32) reorders those; the rest follow
                   in cosine order. Skipped when K >= the candidate depth (nothing to filter).
prefilter-M-K      the same with first stage M (engines.first_stage): ``static`` (static
                   embeddings distilled from all-MiniLM-L6-v2), ``bm25`` (over the query's own
                   candidates), ``client`` (the first stage's own candidate scores, as a caller
                   would send them), ``static+bm25`` (reciprocal-rank fusion)
=================  ==========================================================================

Reported per strategy: NDCG@10, MRR@10 and Recall@100 (computed by ``ir-measures``, i.e.
trec_eval), retention = NDCG@10 / NDCG@10 of torch-fp32 with a paired bootstrap 95% interval,
pairs/s = (query, document) pairs of the requests / seconds spent in ``rerank()``, measured in
this run on this machine (after a warm-up that builds and loads the engine; each strategy has a
fresh engine whose embedding cache fills as candidates recur), and for a prefilter the first
stage's share of those seconds (its tokenizing included, which the cross-encoder then reuses).
Output in ``--out``: ``eval.json``, ``eval.md`` and ``eval.png`` (NDCG@10 against pairs/s).

    python -m evaluation --quick                       # < 3 minutes once the demo model is trained
                                                       # (the first run trains it: ~27 min on 2 cores)
    python -m evaluation --max-queries 60 --depth 300 --out out/eval   # ~20 minutes on 2 cores
    python -m evaluation --dataset DIR --candidates run.trec --model cross-encoder/ms-marco-MiniLM-L-6-v2
    python -m evaluation --depth 1000 --strategies torch-fp32,onnx-fp32,prefilter,prefilter-static,prefilter-bm25,prefilter-client,prefilter-static+bm25
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from engines import EngineConfig, RerankJob, build_reranker
from engines.config import cpu_model, default_cache_dir, default_threads
from engines.models import model_fingerprint, packaged_minilm_path
from evaluation.dataset import BeirData, ensure_dataset, read_beir
from evaluation.training import ensure_trained_model
from vocabulary import PREFILTER_METHODS

log = logging.getLogger("evaluation.relevance")

REFERENCE = "torch-fp32"
#: Engine and precision of each named cross-encoder strategy.
CROSS_ENCODER_STRATEGIES = {
    "torch-fp32": ("torch", "fp32"),
    "onnx-fp32": ("onnx", "fp32"),
    "onnx-int8": ("onnx", "int8"),
    "openvino-int8": ("openvino", "int8"),
}
DEFAULT_KEEPS = (50, 100, 200)
QUICK = {"max_queries": 20, "depth": 50, "keeps": (20,)}
#: Strategy group names of the prefilter's first stages: "prefilter" is the bi-encoder (its
#: strategies keep their old names, prefilter-K); the others give prefilter-<method>-K.
PREFILTER_GROUPS = {"prefilter": "bi-encoder", **{f"prefilter-{m}": m for m in PREFILTER_METHODS if m != "bi-encoder"}}
BOOTSTRAP_SAMPLES = 1000
#: ir-measures names of the three reported measures, by JSON key.
MEASURES = {"ndcg@10": "nDCG@10", "mrr@10": "RR@10", "recall@100": "R@100"}


@dataclass(frozen=True)
class Strategy:
    """One way of ordering the candidates."""

    name: str
    engine: str  # EngineConfig.engine
    precision: str
    keep: int | None = None  # prefilter keep; None = no prefilter
    method: str = "bi-encoder"  # the prefilter's first stage

    def describe(self) -> str:
        if self.engine == "bi-encoder":
            return "bi-encoder cosine only"
        what = f"{self.engine} {self.precision} cross-encoder"
        return f"{self.method} keeps {self.keep}, then {what}" if self.keep is not None else what


def make_strategies(names: Sequence[str], keeps: Sequence[int], prefilter_engine: str, depth: int) -> list[Strategy]:
    """The strategies to run, in report order. ``names`` may hold ``prefilter`` or
    ``prefilter-<method>`` (one strategy per keep).

    Raises:
        click.BadParameter: for an unknown name or prefilter engine.
    """
    if prefilter_engine not in CROSS_ENCODER_STRATEGIES:
        raise click.BadParameter(f"one of {', '.join(CROSS_ENCODER_STRATEGIES)}", param_hint="--prefilter-engine")
    out = []
    for name in names:
        if name == "bi-encoder":
            out.append(Strategy(name, "bi-encoder", "fp32"))
        elif name in CROSS_ENCODER_STRATEGIES:
            out.append(Strategy(name, *CROSS_ENCODER_STRATEGIES[name]))
        elif name in PREFILTER_GROUPS:
            engine, precision = CROSS_ENCODER_STRATEGIES[prefilter_engine]
            for keep in keeps:
                if keep >= depth:
                    log.warning("%s-%d skipped: it keeps every one of the %d candidates", name, keep, depth)
                    continue
                out.append(Strategy(f"{name}-{keep}", engine, precision, keep, PREFILTER_GROUPS[name]))
        else:
            known = ["bi-encoder", *CROSS_ENCODER_STRATEGIES, *PREFILTER_GROUPS]
            raise click.BadParameter(f"unknown strategy {name!r}; known: {', '.join(known)}", param_hint="--strategies")
    return out


# -- metrics ------------------------------------------------------------------------------------------

def ranking_to_run(rankings: dict[str, list[str]]) -> list:
    """ir-measures ScoredDocs whose scores reproduce each ranking exactly (best first).

    trec_eval sorts by score and breaks ties by document id, so the engines' own scores (which can
    tie, and which mix logits with cosines after a prefilter) are replaced by descending ranks.
    """
    import ir_measures

    return [
        ir_measures.ScoredDoc(query_id, doc_id, float(len(ranking) - rank))
        for query_id, ranking in rankings.items()
        for rank, doc_id in enumerate(ranking)
    ]


def per_query_metrics(qrels: dict[str, dict[str, int]], rankings: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """``{measure key: {query_id: value}}`` for :data:`MEASURES`, every query of ``rankings``
    present (a query whose ranking finds nothing relevant scores 0)."""
    import ir_measures

    measures = {key: ir_measures.parse_measure(name) for key, name in MEASURES.items()}
    by_name = {measure: key for key, measure in measures.items()}
    values = {key: {query_id: 0.0 for query_id in rankings} for key in measures}
    qrel_rows = [
        ir_measures.Qrel(query_id, doc_id, grade)
        for query_id in rankings
        for doc_id, grade in qrels.get(query_id, {}).items()
    ]
    for metric in ir_measures.iter_calc(list(measures.values()), qrel_rows, ranking_to_run(rankings)):
        values[by_name[metric.measure]][metric.query_id] = float(metric.value)
    return values


def mean_metrics(values: dict[str, dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean(list(per_query.values()))) if per_query else 0.0 for key, per_query in values.items()}


def bootstrap_ratio_ci(numerator: np.ndarray, denominator: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """95% paired-bootstrap interval of ``mean(numerator) / mean(denominator)`` over queries."""
    rng = np.random.default_rng(seed)
    n = len(numerator)
    draws = rng.integers(0, n, size=(samples, n))
    ratios = numerator[draws].mean(1) / np.maximum(denominator[draws].mean(1), 1e-12)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


# -- first stage ---------------------------------------------------------------------------------------

def read_candidates(path: Path, query_ids: Sequence[str], depth: int) -> dict[str, list[str]]:
    """Top ``depth`` documents per query of a TREC run file (``qid Q0 docid rank score tag``),
    by descending score (ties by rank). Queries without a line get no candidates."""
    return {q: [doc for doc, _ in scored] for q, scored in read_scored_candidates(path, query_ids, depth).items()}


def read_scored_candidates(path: Path, query_ids: Sequence[str], depth: int) -> dict[str, list[tuple[str, float]]]:
    """:func:`read_candidates` with each document's run-file score."""
    rows: dict[str, list[tuple[float, int, str]]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise click.BadParameter(f"{path}:{number}: expected 'qid Q0 docid rank score tag'", param_hint="--candidates")
            query_id, _, doc_id, rank, score, _ = fields
            rows.setdefault(query_id, []).append((-float(score), int(rank), doc_id))
    wanted = set(query_ids)
    return {q: [(doc, -score) for score, _, doc in sorted(docs)[:depth]] for q, docs in rows.items() if q in wanted}


def write_candidates(path: Path, candidates: dict[str, list[str]], tag: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for query_id, docs in candidates.items():
            for rank, doc_id in enumerate(docs, 1):
                handle.write(f"{query_id} Q0 {doc_id} {rank} {len(docs) - rank + 1} {tag}\n")


def bi_encoder_candidates(data: BeirData, query_ids: Sequence[str], depth: int,
                          cache_dir: Path | None) -> dict[str, list[tuple[str, float]]]:
    """Top ``depth`` of the whole corpus per query by all-MiniLM-L6-v2 cosine (sentence-transformers),
    each with its cosine.

    Corpus embeddings are cached as .npy keyed by the corpus text and the bi-encoder's weights,
    since the corpus is the same in every run.
    """
    from sentence_transformers import SentenceTransformer

    model_path = packaged_minilm_path()
    doc_ids = list(data.corpus)
    texts = [data.corpus[d] for d in doc_ids]
    encoder = SentenceTransformer(str(model_path), device="cpu")
    key = hashlib.sha256(model_fingerprint(model_path).encode())
    for doc_id, text in zip(doc_ids, texts):
        key.update(f"{doc_id}\0{text}\0".encode())
    cache = cache_dir / "eval" / f"corpus-embeddings-{key.hexdigest()[:16]}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        doc_vectors = np.load(cache)
    else:
        doc_vectors = encoder.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, doc_vectors)
            os.replace(tmp, cache)
    query_vectors = encoder.encode([data.queries[q] for q in query_ids], batch_size=64, normalize_embeddings=True,
                                   convert_to_numpy=True)
    scores = query_vectors @ doc_vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return {q: [(doc_ids[i], float(scores[k, i])) for i in row] for k, (q, row) in enumerate(zip(query_ids, top))}


# -- running the strategies ----------------------------------------------------------------------------

@dataclass
class StrategyRun:
    rankings: dict[str, list[str]]
    seconds: float
    pairs: int  # (query, document) pairs in the requests
    cross_encoded: int  # pairs the cross-encoder scored
    build_seconds: float  # building and warming the engine (export/quantization when not cached)
    engine_name: str  # what actually ran, e.g. "onnx-int8" or "bi-encoder-openvino-fp32"
    prefilter_seconds: float = 0.0  # of `seconds`, in the prefilter's first stage (its tokenizing included)
    prefilter_tokenize_seconds: float = 0.0  # of those, tokenizing that the cross-encoder then reuses


def run_strategy(strategy: Strategy, model: str, data: BeirData, candidates: dict[str, list[str]],
                 batch_queries: int, threads: int | None, embedding_cache: int, max_length: int | None,
                 candidate_scores: dict[str, list[float]] | None = None) -> StrategyRun:
    """Rerank every query's candidates with ``strategy`` through :func:`engines.build_reranker`
    (``candidate_scores``: the first stage's score of each candidate, for the ``client`` method)."""
    config = EngineConfig(
        engine=strategy.engine, model=model, precision=strategy.precision, device="cpu", threads=threads,
        embedding_cache_size=embedding_cache, max_length=max_length,
        # Only the prefilter strategies filter, and they say so per job.
        prefilter_threshold=10**9, prefilter_keep=strategy.keep or 100, prefilter_method=strategy.method,
    )
    started = time.perf_counter()
    reranker = build_reranker(config)
    # Exports, quantization and kernel compilation happen here, so the timed part below measures
    # steady-state scoring only.
    reranker.warmup()
    build_seconds = time.perf_counter() - started
    reranker.reset_stats()
    query_ids = [q for q in candidates if candidates[q]]

    rankings: dict[str, list[str]] = {}
    seconds = 0.0
    pairs = cross_encoded = 0
    for start in range(0, len(query_ids), batch_queries):
        chunk = query_ids[start : start + batch_queries]
        jobs = [
            RerankJob(
                data.queries[q], [data.corpus[d] for d in candidates[q]],
                prefilter=strategy.keep is not None, keep=strategy.keep,
                scores=candidate_scores.get(q) if candidate_scores else None,
            )
            for q in chunk
        ]
        tick = time.perf_counter()
        outcomes = reranker.rerank(jobs)
        seconds += time.perf_counter() - tick
        for query_id, outcome in zip(chunk, outcomes):
            docs = candidates[query_id]
            order = [int(i) for i in outcome.order]
            if sorted(order) != list(range(len(docs))):
                raise RuntimeError(f"{strategy.name}: the order of query {query_id} is not a permutation of its candidates")
            rankings[query_id] = [docs[i] for i in order]
            pairs += len(docs)
            cross_encoded += int(np.count_nonzero(outcome.cross_encoded))
    stats = reranker.stats()
    prefilter_seconds = sum(stage["seconds"] for stage in stats["first_stages"].values())
    return StrategyRun(rankings, seconds, pairs, cross_encoded, build_seconds, reranker.engine_name,
                       prefilter_seconds, stats["first_stage_tokenize_s"])


# -- reporting -----------------------------------------------------------------------------------------

def machine_description() -> dict:
    """CPU model and the cores usable by this process, for the report."""
    return {"cpu": cpu_model(), "cores": default_threads()}


def markdown_table(report: dict) -> str:
    """The report's strategies as a GitHub markdown table."""
    lines = [
        "| strategy | what | NDCG@10 | MRR@10 | Recall@100 | retention (95% CI) | pairs/s | prefilter share |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, row in report["strategies"].items():
        retention = "-"
        if row["retention"] is not None:
            low, high = row["retention_ci95"]
            retention = f"{row['retention']:.3f} ({low:.3f}-{high:.3f})"
        lines.append(
            f"| {name} | {row['description']} | {row['ndcg@10']:.4f} | {row['mrr@10']:.4f} | "
            f"{row['recall@100']:.4f} | {retention} | {row['pairs_per_s']:.0f} | {_share(row)} |"
        )
    meta = report["run"]
    lines += [
        "",
        f"{report['dataset']['queries_evaluated']} queries of `{report['dataset']['name']}` "
        f"({report['dataset']['split']}), {meta['depth']} candidates each from {report['first_stage']['kind']} "
        f"(first-stage Recall@{meta['depth']} {report['first_stage']['recall_at_depth']:.4f}); "
        f"model `{report['model']['name']}`; {report['machine']['cpu']}, {meta['threads'] or report['machine']['cores']} "
        f"threads (1-minute load average {report['machine']['load_average_at_start'][0]:.1f} at the start: "
        f"the machine is shared); {meta['wall_s']:.0f} s wall.",
        "",
    ]
    return "\n".join(lines)


def _share(row: dict) -> str:
    return "-" if row.get("prefilter_share") is None else f"{100 * row['prefilter_share']:.1f}%"


def plot_quality_speed(report: dict, path: Path) -> None:
    """One point per strategy: pairs/s (log x) against NDCG@10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, (name, row) in enumerate(report["strategies"].items()):
        marker = "s" if name == REFERENCE else "^" if name.startswith("prefilter") else "o"
        ax.scatter(row["pairs_per_s"], row["ndcg@10"], marker=marker, s=60)
        # Alternate labels above and below: equal-quality strategies (fp32 runtimes) sit side by side.
        ax.annotate(name, (row["pairs_per_s"], row["ndcg@10"]), textcoords="offset points",
                    xytext=(6, 4 if i % 2 == 0 else -12), fontsize=9)
    ax.set_xscale("log")
    ax.set(xlabel="pairs/s (log scale, this machine)", ylabel="NDCG@10",
           title=f"Quality vs speed: {report['dataset']['name']}, {report['dataset']['queries_evaluated']} queries, "
                 f"depth {report['run']['depth']}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _dataset_folder(path: Path | None, split: str) -> tuple[Path, str]:
    """A BEIR folder and the dataset's name: ``path`` itself, or its ``<split>/`` subfolder (the
    layout of ``python -m evaluation.dataset``), or the cached stdlib docstring set."""
    root = ensure_dataset() if path is None else path
    folder = root / split if (root / split / "corpus.jsonl").is_file() else root
    if not (folder / "corpus.jsonl").is_file():
        raise click.BadParameter(f"{path} has no corpus.jsonl (nor {split}/corpus.jsonl)", param_hint="--dataset")
    name = root.name
    manifest = root / "manifest.json"
    if manifest.is_file():
        name = json.loads(manifest.read_text()).get("name", name)
    return folder, name


def evaluate(*, dataset: Path | None, split: str, candidates_file: Path | None, depth: int, max_queries: int | None,
             model: str | None, strategy_names: Sequence[str], keeps: Sequence[int], prefilter_engine: str,
             batch_queries: int, threads: int | None, embedding_cache: int, max_length: int | None, seed: int,
             out: Path, command: str, progress=print) -> dict:
    """Run every strategy and write ``eval.json``, ``eval.md`` and ``eval.png`` into ``out``;
    returns the report (the JSON's content)."""
    wall_start = time.perf_counter()
    load_at_start = list(os.getloadavg())  # the machine is shared: say how busy it was
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    folder, dataset_name = _dataset_folder(dataset, split)
    data = read_beir(folder, split)
    query_ids = sorted(data.queries)
    random.Random(seed).shuffle(query_ids)  # a fixed sample when --max-queries is smaller
    if max_queries is not None:
        query_ids = query_ids[:max_queries]
    if not query_ids:
        raise click.UsageError(f"{folder} has no query with a relevant document in qrels/{split}.tsv")
    if model is None:
        progress("model: the demo cross-encoder (evaluation.training). If it is not cached yet it is trained "
                 "first: ~27 min on 2 cores, with its progress below")
        model = str(ensure_trained_model())
    strategies = make_strategies(strategy_names, keeps, prefilter_engine, depth)

    out.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    if candidates_file is not None:
        scored = read_scored_candidates(candidates_file, query_ids, depth)
        first_stage = f"run file {candidates_file.name}"
    else:
        scored = bi_encoder_candidates(data, query_ids, depth, default_cache_dir())
        first_stage = "bi-encoder (all-MiniLM-L6-v2) over the whole corpus"
    candidates = {q: [doc for doc, _ in docs] for q, docs in scored.items()}
    candidate_scores = {q: [score for _, score in docs] for q, docs in scored.items()}
    missing = [q for q in query_ids if not candidates.get(q)]
    candidates = {q: candidates[q] for q in query_ids if candidates.get(q)}
    write_candidates(out / "candidates.trec", candidates, "first-stage")
    first_stage_recall = float(np.mean([
        len(set(candidates.get(q, [])) & {d for d, g in data.qrels[q].items() if g > 0})
        / max(1, sum(1 for g in data.qrels[q].values() if g > 0))
        for q in query_ids
    ]))
    progress(f"first stage: {first_stage}, {len(candidates)} queries x <= {depth} candidates, "
             f"recall@{depth} {first_stage_recall:.4f} ({time.perf_counter() - tick:.0f} s)")

    rows: dict[str, dict] = {}
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    for strategy in strategies:
        progress(f"{strategy.name}: {strategy.describe()} ...")
        result = run_strategy(strategy, model, data, candidates, batch_queries, threads, embedding_cache, max_length,
                              candidate_scores)
        # Queries the first stage gave no candidate count as 0 for every strategy.
        values = per_query_metrics(data.qrels, {**{q: [] for q in missing}, **result.rankings})
        per_query[strategy.name] = values
        means = mean_metrics(values)
        rows[strategy.name] = {
            **means,
            "retention": None,
            "retention_ci95": None,
            "pairs_per_s": result.pairs / result.seconds if result.seconds > 0 else float("inf"),
            "description": strategy.describe(),
            "engine": result.engine_name,
            "prefilter_keep": strategy.keep,
            "prefilter_method": strategy.method if strategy.keep is not None else None,
            "prefilter_seconds": round(result.prefilter_seconds, 6),
            "prefilter_tokenize_seconds": round(result.prefilter_tokenize_seconds, 6),
            "prefilter_share": result.prefilter_seconds / result.seconds if strategy.keep is not None and result.seconds > 0
            else None,
            "pairs": result.pairs,
            "cross_encoded_pairs": result.cross_encoded,
            "seconds": round(result.seconds, 3),
            "build_and_warmup_seconds": round(result.build_seconds, 3),
        }
        share = f", prefilter {_share(rows[strategy.name])}" if strategy.keep is not None else ""
        progress(f"  NDCG@10 {means['ndcg@10']:.4f}  MRR@10 {means['mrr@10']:.4f}  R@100 {means['recall@100']:.4f}  "
                 f"{rows[strategy.name]['pairs_per_s']:.0f} pairs/s ({result.seconds:.0f} s{share})")

    if REFERENCE in rows:
        order = sorted(per_query[REFERENCE]["ndcg@10"])
        reference = np.array([per_query[REFERENCE]["ndcg@10"][q] for q in order])
        for name, row in rows.items():
            mine = np.array([per_query[name]["ndcg@10"][q] for q in order])
            row["retention"] = row["ndcg@10"] / rows[REFERENCE]["ndcg@10"] if rows[REFERENCE]["ndcg@10"] > 0 else None
            if row["retention"] is not None:
                row["retention_ci95"] = list(bootstrap_ratio_ci(mine, reference, seed=seed))

    versions = {}
    for package in ("torch", "transformers", "sentence-transformers", "onnxruntime", "openvino", "nncf", "ir-measures",
                    "pytrec-eval-terrier", "model2vec"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    report = {
        "strategies": rows,
        "dataset": {"name": dataset_name, "path": str(folder), "split": split, "queries_evaluated": len(query_ids),
                    "queries_available": len(data.queries), "documents": len(data.corpus)},
        "model": {"name": Path(model).name if Path(model).is_dir() else model, "path": model},
        "first_stage": {"kind": first_stage, "depth": depth, "recall_at_depth": first_stage_recall,
                        "queries_without_candidates": len(missing)},
        "reference": REFERENCE,
        "run": {"command": command, "depth": depth, "seed": seed, "batch_queries": batch_queries, "threads": threads,
                "embedding_cache_size": embedding_cache, "max_length": max_length,
                "prefilter_engine": prefilter_engine, "wall_s": 0.0,
                "started": started_at},
        "machine": machine_description(),
        "versions": versions,
    }
    report["machine"]["load_average_at_start"] = load_at_start
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["run"]["wall_s"] = round(time.perf_counter() - wall_start, 1)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "eval.md").write_text(markdown_table(report))
    plot_quality_speed(report, out / "eval.png")
    return report


def _int_list(value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter("a comma-separated list of integers >= 1")
    return numbers


def configure_logging(verbose: bool) -> None:
    """Warnings only, unless ``verbose``; but always the demo model's training progress, which
    can take half an hour on a first run and would otherwise look like a hang."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("evaluation.training").setLevel(logging.INFO)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="BEIR folder (or an `evaluation.dataset` OUT_DIR with test/). Default: the stdlib docstring set, built in the cache.")
@click.option("--split", default="test", show_default=True, help="Which qrels/<split>.tsv to evaluate.")
@click.option("--candidates", "candidates_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="First-stage TREC run file. Default: bi-encoder top --depth over the corpus.")
@click.option("--depth", type=click.IntRange(min=1), default=100, show_default=True,
              help="Candidates per query (prefilter keeps >= depth are skipped).")
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help="Evaluate a fixed random sample of this many queries (default: all).")
@click.option("--model", default=None,
              help="Cross-encoder folder or hub id. Default: the demo model of evaluation.training (trained if missing).")
@click.option("--strategies",
              default="bi-encoder,torch-fp32,onnx-fp32,onnx-int8,openvino-int8,prefilter,prefilter-static,prefilter-bm25,"
                      "prefilter-client,prefilter-static+bm25",
              show_default=True, help="Comma-separated; 'prefilter' (bi-encoder) and 'prefilter-<method>' (static, bm25, "
                                      "client, static+bm25) mean one strategy per --keeps value.")
@click.option("--keeps", default=",".join(map(str, DEFAULT_KEEPS)), show_default=True,
              help="Prefilter keep sizes.")
@click.option("--prefilter-engine", default="onnx-fp32", show_default=True,
              help="Cross-encoder behind the prefilter (fp32 isolates the prefilter's own cost).")
@click.option("--batch-queries", type=click.IntRange(min=1), default=4, show_default=True,
              help="Queries per rerank() call (the engine batches their pairs together).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Runtime threads (default: all cores).")
@click.option("--embedding-cache", type=click.IntRange(min=0), default=EngineConfig.embedding_cache_size,
              show_default=True,
              help="Bi-encoder embedding cache size, as deployed by default. Candidates recur across queries, so "
                   "the bi-encoder and prefilter figures are warm-cache ones; 0 embeds every document afresh.")
@click.option("--max-length", type=click.IntRange(min=8), default=None, help="Truncation length (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the query sample and the bootstrap.")
@click.option("--quick", is_flag=True,
              help=f"{QUICK['max_queries']} queries, depth {QUICK['depth']}, prefilter keep {QUICK['keeps'][0]}: "
                   "a few minutes on 2 cores once the demo model is trained (overrides those three options).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/eval"), show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Log the engines' messages.")
def main(dataset, split, candidates_file, depth, max_queries, model, strategies, keeps, prefilter_engine, batch_queries,
         threads, embedding_cache, max_length, seed, quick, out, verbose) -> None:
    """Relevance (NDCG@10, MRR@10, Recall@100) and speed of every reranking strategy, in one run."""
    configure_logging(verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if quick:
        max_queries, depth, keeps = QUICK["max_queries"], QUICK["depth"], QUICK["keeps"]
    else:
        keeps = _int_list(keeps)
    names = [name.strip() for name in strategies.split(",") if name.strip()]
    command = " ".join([click.get_current_context().command_path, *(shlex.quote(arg) for arg in sys.argv[1:])])
    report = evaluate(
        dataset=dataset, split=split, candidates_file=candidates_file, depth=depth, max_queries=max_queries,
        model=model, strategy_names=names, keeps=keeps, prefilter_engine=prefilter_engine,
        batch_queries=batch_queries, threads=threads, embedding_cache=embedding_cache, max_length=max_length,
        seed=seed, out=out, command=command, progress=lambda line: click.echo(line, err=True),
    )
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['dataset']['name']}: {report['dataset']['queries_evaluated']} queries, "
                        f"depth {report['run']['depth']}, {report['run']['wall_s']:.0f} s")
    for column in ("strategy", "NDCG@10", "MRR@10", "R@100", "retention", "95% CI", "pairs/s", "prefilter share"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, row in report["strategies"].items():
        ci = row["retention_ci95"]
        table.add_row(name, f"{row['ndcg@10']:.4f}", f"{row['mrr@10']:.4f}", f"{row['recall@100']:.4f}",
                      "-" if row["retention"] is None else f"{row['retention']:.3f}",
                      "-" if ci is None else f"{ci[0]:.3f}-{ci[1]:.3f}", f"{row['pairs_per_s']:.0f}", _share(row))
    Console().print(table)
    click.echo(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'eval.png'}", err=True)


if __name__ == "__main__":
    main(prog_name="python -m evaluation.relevance")
