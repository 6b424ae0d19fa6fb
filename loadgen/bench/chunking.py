"""What reading long documents in chunks costs: ``python -m loadgen.bench.chunking`` (``make bench-chunking``).

One request of 10 documents of 2,000 words each (corpus passages run together: each is about
five times what a 512-token model reads), scored by one engine with ``max_chunks_per_doc`` 1
(truncation), 4 and 10, the settings alternated round by round so that a drift of the machine
touches each alike. Per setting: the pairs the cross-encoder scored, the request's latency (the
engine's ``rerank`` of the one job, median and best of the rounds) and pairs per second. The
engine is measured, not Kafka: the worker adds the same few milliseconds to every setting.

The default model is the project's untrained-head test model (the cost of ms-marco-MiniLM-L-6-v2;
its scores mean nothing, and none are reported).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import click

from engines import EngineConfig, RerankJob, build_reranker
from engines.corpus import load_passages, queries
from engines.testmodel import ensure_test_model
from loadgen.bench.machine import machine, summary
from loadgen.bench.report import command, table, write_json, write_text

DOCUMENTS = 10
WORDS = 2000
CHUNK_SETTINGS = (1, 4, 10)


def long_request(documents: int = DOCUMENTS, words: int = WORDS, seed: int = 1) -> RerankJob:
    """A query with ``documents`` texts of ``words`` words each, cut from the corpus run together."""
    text = " ".join(load_passages()).split()
    step = max(1, (len(text) - words) // documents)
    docs = [" ".join(text[(k * step) % (len(text) - words):][:words]) for k in range(documents)]
    return RerankJob(queries(1, seed=seed)[0], docs, prefilter=False)


def measure(reranker, job: RerankJob, settings=CHUNK_SETTINGS, rounds: int = 7) -> dict:
    """Latency and pairs/s of ``job`` at each ``max_chunks`` setting, rounds alternated."""
    times: dict[int, list[float]] = {s: [] for s in settings}
    pairs: dict[int, int] = {}
    for s in settings:  # a first run each: kernels for new shapes, caches
        reranker.rerank([_with_chunks(job, s)])
    for _ in range(rounds):
        for s in settings:
            started = time.perf_counter()
            (outcome,) = reranker.rerank([_with_chunks(job, s)])
            times[s].append(time.perf_counter() - started)
            pairs[s] = outcome.pairs_scored
    rows = {}
    for s in settings:
        median = statistics.median(times[s])
        rows[s] = {"max_chunks_per_doc": s, "pairs": pairs[s], "latency_ms_median": 1000 * median,
                   "latency_ms_best": 1000 * min(times[s]), "pairs_per_s": pairs[s] / median}
    return rows


def _with_chunks(job: RerankJob, max_chunks: int) -> RerankJob:
    return RerankJob(job.query, job.documents, prefilter=False, max_chunks=max_chunks)


def markdown(report: dict) -> str:
    rows = [(r["max_chunks_per_doc"], r["pairs"], f"{r['latency_ms_median']:.0f}", f"{r['latency_ms_best']:.0f}",
             f"{r['pairs_per_s']:.0f}") for r in report["rows"].values()]
    lines = table(["max_chunks_per_doc", "pairs scored", "latency p50 ms", "best ms", "pairs/s"], rows, align="rrrrr")
    return "\n".join([f"{report['engine']}, {report['documents']} documents of {report['words']} words, "
                      f"{report['rounds']} rounds; {summary(report['machine'])}", "", *lines]) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", help="cross-encoder folder or id (default: the untrained-head test model)")
@click.option("--engine", default="openvino", show_default=True, help="openvino, onnx or torch")
@click.option("--precision", default="auto", show_default=True)
@click.option("--rounds", type=int, default=7, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the report here")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path), help="write the table here")
def main(model: str | None, engine: str, precision: str, rounds: int, json_path: Path | None,
         md_path: Path | None) -> None:
    """Latency and pairs/s of 10 documents of 2,000 words at max_chunks_per_doc 1, 4 and 10."""
    reranker = build_reranker(EngineConfig(engine=engine, model=model or str(ensure_test_model()),
                                           precision=precision))
    job = long_request()
    report = {"command": command("loadgen.bench.chunking"), "machine": machine(), "engine": reranker.engine_name,
              "documents": DOCUMENTS, "words": WORDS, "rounds": rounds,
              "rows": measure(reranker, job, rounds=rounds)}
    write_json(json_path, report)
    text = markdown(report)
    write_text(md_path, text)
    click.echo(text)


if __name__ == "__main__":
    main()
