"""``python -m evaluation.first_stages``: how well each first stage ranks on its own.

For each query of a BEIR-layout dataset, its candidates (a TREC run file, the top ``--depth`` of a
corpus-level retriever; ``--make-candidates`` writes one from a word BM25 over the whole corpus)
are ranked by every first stage alone, through the engine's public call
(:meth:`engines.Reranker.rank_first_stage`), beside two references computed here with ``bm25s``:

==================  ================================================================================
``corpus``          the run file's own order (with ``--make-candidates``: BM25 over the whole corpus,
                    on stemmed words without stop words)
``plain-bm25``      BM25 over the query's own candidates on plain words: ``bm25s.tokenize``'s
                    defaults (lower-cased words, English stop words, no stemming)
``bm25`` ...        the engine's first stages (``engines.first_stage``), per request
==================  ================================================================================

Reported per method: NDCG@10 and Recall@100 (trec_eval, through ``ir-measures``), NDCG@10 ÷
``plain-bm25``'s with a paired-bootstrap 95% interval, and the first stage's mean milliseconds per
request (documents of the request included). No cross-encoder runs: the figures are the first
stages' own. Output: ``first_stages.json`` and ``first_stages.md`` in ``--out``.

    python -m evaluation.first_stages --dataset DIR --make-candidates DIR/bm25-top1000.trec --depth 1000
    python -m evaluation.first_stages --dataset DIR --candidates run.trec --depth 1000 --out out/first-stages
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import bm25s
import click
import numpy as np
import Stemmer

from engines import EngineConfig, build_reranker
from engines.first_stage import BM25_B, BM25_K1, ranked
from engines.testmodel import ensure_test_model
from evaluation.dataset import BeirData, read_beir
from evaluation.relevance import (
    bootstrap_ratio_ci,
    machine_description,
    mean_metrics,
    per_query_metrics,
    read_scored_candidates,
    write_candidates,
)
from vocabulary import PREFILTER_METHODS

log = logging.getLogger("evaluation.first_stages")

REFERENCE = "plain-bm25"
CORPUS = "corpus"


def _bm25s_words(texts: list[str], stem: bool) -> list[list[str]]:
    """``bm25s.tokenize``'s words without English stop words, Snowball-stemmed when ``stem``."""
    stemmer = Stemmer.Stemmer("english") if stem else None
    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)


def _bm25s_index(texts: list[str], stem: bool) -> bm25s.BM25:
    index = bm25s.BM25(method="lucene", k1=BM25_K1, b=BM25_B)
    index.index(_bm25s_words(texts, stem), show_progress=False)
    return index


def _bm25s_scores(index: bm25s.BM25, words: list[str], documents: int) -> np.ndarray:
    known = [w for w in words if w in index.vocab_dict]
    return index.get_scores(known) if known else np.zeros(documents)


def corpus_bm25_candidates(data: BeirData, depth: int) -> dict[str, list[tuple[str, float]]]:
    """Top ``depth`` of the whole corpus per query by BM25 (Lucene variant, k1 1.5, b 0.75) on
    stemmed words without English stop words: the classic first retrieval stage."""
    ids = list(data.corpus)
    index = _bm25s_index([data.corpus[i] for i in ids], stem=True)
    out = {}
    for query_id, words in zip(data.queries, _bm25s_words(list(data.queries.values()), stem=True)):
        scores = _bm25s_scores(index, words, len(ids))
        out[query_id] = [(ids[k], float(scores[k])) for k in ranked(np.arange(len(ids)), scores)[:depth]]
    return out


def plain_bm25(query: str, documents: list[str]) -> np.ndarray:
    """BM25 of the documents among themselves, on ``bm25s.tokenize``'s default words."""
    [words] = _bm25s_words([query], stem=False)
    return _bm25s_scores(_bm25s_index(documents, stem=False), words, len(documents))


def _order(doc_ids: list[str], scores: np.ndarray) -> list[str]:
    return [doc_ids[k] for k in ranked(np.arange(len(doc_ids)), np.asarray(scores))]


def evaluate(data: BeirData, candidates: dict[str, list[tuple[str, float]]], methods: list[str], seed: int) -> dict:
    """Rankings of every method over every query's candidates, their metrics and timings."""
    reranker = build_reranker(EngineConfig(model=str(ensure_test_model()), device="cpu"))  # only its first stages run
    reranker.warmup()
    rankings: dict[str, dict[str, list[str]]] = {m: {} for m in [CORPUS, REFERENCE, *methods]}
    seconds: dict[str, float] = {m: 0.0 for m in [REFERENCE, *methods]}
    for query_id, scored in candidates.items():
        doc_ids = [d for d, _ in scored]
        texts = [data.corpus[d] for d in doc_ids]
        query = data.queries[query_id]
        rankings[CORPUS][query_id] = doc_ids
        tick = time.perf_counter()
        rankings[REFERENCE][query_id] = _order(doc_ids, plain_bm25(query, texts))
        seconds[REFERENCE] += time.perf_counter() - tick
        for method in methods:
            tick = time.perf_counter()
            ranking = reranker.rank_first_stage(query, texts, method=method, scores=[s for _, s in scored])
            seconds[method] += time.perf_counter() - tick
            rankings[method][query_id] = [doc_ids[k] for k in ranking.order]
    metrics = {m: per_query_metrics(data.qrels, r) for m, r in rankings.items()}
    reference = np.array([metrics[REFERENCE]["ndcg@10"][q] for q in candidates])
    rows = {}
    for method, values in metrics.items():
        ndcg = np.array([values["ndcg@10"][q] for q in candidates])
        low, high = bootstrap_ratio_ci(ndcg, reference, seed=seed)
        rows[method] = {**mean_metrics(values), "ndcg@10_vs_plain_bm25": float(ndcg.mean() / max(reference.mean(), 1e-12)),
                        "ci95": [low, high],
                        "ms_per_request": 1000 * seconds[method] / len(candidates) if method in seconds else None}
    return rows


def markdown(report: dict) -> str:
    lines = [f"{report['queries']} queries of `{report['dataset']}`, {report['depth']} candidates each "
             f"(`{report['candidates']}`); {report['machine']['cpu']}, {report['machine']['cores']} cores.", "",
             "| first stage | NDCG@10 | ÷ plain-bm25 (95% CI) | Recall@100 | ms / request |",
             "|---|---:|---:|---:|---:|"]
    for method, row in report["methods"].items():
        ms = "" if row["ms_per_request"] is None else f"{row['ms_per_request']:.1f}"
        low, high = row["ci95"]
        lines.append(f"| {method} | {row['ndcg@10']:.3f} | {row['ndcg@10_vs_plain_bm25']:.3f} ({low:.3f}-{high:.3f}) "
                     f"| {row['recall@100']:.3f} | {ms} |")
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.")
@click.option("--split", default="test", show_default=True)
@click.option("--candidates", "candidates_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TREC run file of candidates (qid Q0 docid rank score tag).")
@click.option("--make-candidates", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the top --depth of a corpus-level word BM25 to this run file, and use it.")
@click.option("--depth", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--methods", default="bm25,static,static+bm25,client,bi-encoder", show_default=True,
              help=f"Comma-separated, of: {', '.join(PREFILTER_METHODS)}.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/first-stages"),
              show_default=True)
def main(dataset, split, candidates_file, make_candidates, depth, methods, seed, out) -> None:
    """NDCG@10 and cost of each first stage alone over a dataset's candidates."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # an index per query: its debug lines would flood
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if (candidates_file is None) == (make_candidates is None):
        raise click.UsageError("give exactly one of --candidates and --make-candidates")
    wanted = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(PREFILTER_METHODS))
    if unknown:
        raise click.BadParameter(f"unknown first stage(s) {unknown}; known: {', '.join(PREFILTER_METHODS)}",
                                 param_hint="--methods")
    data = read_beir(dataset, split)
    if make_candidates is not None:
        scored = corpus_bm25_candidates(data, depth)
        make_candidates.parent.mkdir(parents=True, exist_ok=True)
        write_candidates(make_candidates, {q: [d for d, _ in docs] for q, docs in scored.items()}, "bm25-words")
        candidates_file = make_candidates
    candidates = read_scored_candidates(candidates_file, list(data.queries), depth)
    candidates = {q: docs for q, docs in candidates.items() if docs}
    report = {
        "command": "python -m evaluation.first_stages " + shlex.join(sys.argv[1:]),
        "dataset": str(dataset), "candidates": str(candidates_file), "depth": depth, "queries": len(candidates),
        "machine": machine_description(),
        "methods": evaluate(data, candidates, wanted, seed),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "first_stages.json").write_text(json.dumps(report, indent=2))
    (out / "first_stages.md").write_text(markdown(report))
    click.echo(markdown(report))


if __name__ == "__main__":
    main(prog_name="python -m evaluation.first_stages")
