"""Does every engine serve this model's scores? ``python -m engines.check MODEL``.

What a user runs on their own checkpoint before deploying it (``make check-model MODEL=...``). It
loads the model as transformers does and scores a fixed set of pairs with the checkpoint's own
forward pass (``AutoModelForSequenceClassification``, or ``AutoModelForCausalLM`` for a decoder
reranker, with the model's default attention, a 2-D 0/1 mask, and its own ``AutoTokenizer``), then
runs every engine this machine can run on the same pairs and prints, per engine: whether it
builds (and how long that took), the largest difference from transformers (fp32) or the Pearson
correlation with it (int8, bf16, fp16), pairs/s, and a verdict. The exit status is 1 when an
engine that builds would serve wrong scores, 0 otherwise.

The pairs: corpus queries each with the passage it came from and with a random one (so scores
spread as relevant and irrelevant pairs do), an empty document, a whitespace-only one, one far
longer than the model reads (truncation), digit runs and non-ASCII text, and that long document's
:data:`CHECK_CHUNKS` chunks as the engines cut them (``max_chunks_per_doc``), each held to the same
limit as the edge pairs; the engine's chunked score of the document must be its best chunk's.

The worker runs the same comparison on a handful of pairs when it builds an engine
(:func:`verify_engine`, called by :func:`engines.build_reranker`) and refuses to serve one that
fails, naming the engine to use instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from engines.batching import BatchRunner
from engines.chunking import job_texts
from engines.config import EngineConfig, cuda_available
from engines.decoder import DecoderBatchRunner
from engines.families import RerankerKind, inspect_reranker
from engines.fidelity import EDGE_DOCUMENTS, EngineRefused, Fidelity, check_pairs, compare, model_max_length, reference_scores
from engines.models import ModelFolder, load_fast_tokenizer
from engines.policy import ChunkOptions
from engines.reranker import RerankJob, build_reranker

#: Chunks of the check's long document (three times the model's length) that are scored.
CHECK_CHUNKS = 4
CHECK_CHUNKING = ChunkOptions(CHECK_CHUNKS, overlap=32)

# -- the command -----------------------------------------------------------------------------------
#: (engine, precision) pairs the check tries on CPU, and on CUDA where there is a GPU.
CPU_ENGINES = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"),
               ("openvino", "int8")]
CUDA_ENGINES = [("torch", "fp16"), ("torch", "bf16"), ("onnx", "fp16"), ("onnx", "fp32")]


def engine_scores(reranker, queries: list[str], documents: list[str]) -> np.ndarray:
    """Scores of the pairs through a built reranker's public entry point (no prefilter)."""
    outcomes = reranker.rerank([RerankJob(q, [d], prefilter=False) for q, d in zip(queries, documents)])
    return np.array([o.scores[0] for o in outcomes], dtype=np.float64)


def chunk_texts(folder: ModelFolder, kind: RerankerKind, max_length: int, query: str, document: str) -> list[str]:
    """The chunks an engine scores of ``document`` beside ``query`` (:mod:`engines.chunking`)."""
    tokenizer, _, pad_id = load_fast_tokenizer(folder)
    runner = (DecoderBatchRunner if kind.decoder else BatchRunner)(tokenizer, None, max_length, pad_id, 1, 1,
                                                                   overlap=False)
    return job_texts(runner, query, None, [document], [0], CHECK_CHUNKING).texts


def chunked_score(reranker, query: str, document: str) -> float:
    """The raw score a reranker gives ``document`` read in :data:`CHECK_CHUNKS` chunks."""
    job = RerankJob(query, [document], prefilter=False, max_chunks=CHECK_CHUNKS, chunk_overlap=CHECK_CHUNKING.overlap)
    (outcome,) = reranker.rerank([job])
    return float(outcome.scores[0])


def chunked_agrees(chunked: float, best_chunk: float, fidelity: Fidelity) -> bool:
    """Whether a document's chunked score is its best chunk's as scored on its own: to float noise in
    fp32; reduced precisions move with the micro-batch a pair lands in, by up to twice their worst
    error against transformers."""
    allowed = 1e-5 + 1e-4 * abs(best_chunk) if fidelity.exact_required else 2 * fidelity.max_abs
    return abs(chunked - best_chunk) <= allowed


@dataclass
class Row:
    engine: str
    built: bool
    build_s: float
    fidelity: Fidelity | None
    pairs_per_s: float
    verdict: str
    note: str = ""


def run_check(model: str, engines: list[tuple[str, str, str]] | None = None, max_length: int | None = None,
              cache_dir: str | None = None, n_corpus: int = 96, timing_rounds: int = 1) -> list[Row]:
    """Check every (engine, precision, device) of ``engines`` (default: all this machine runs)."""
    folder = ModelFolder.load(model)
    kind = inspect_reranker(folder)
    length = model_max_length(folder, kind, max_length)
    if engines is None:
        engines = [(e, p, "cpu") for e, p in CPU_ENGINES]
        if cuda_available():
            engines += [(e, p, "cuda") for e, p in CUDA_ENGINES]
    queries, documents = check_pairs(n_corpus, long_words=3 * length)
    long_query, long_document = queries[n_corpus + len(EDGE_DOCUMENTS)], documents[n_corpus + len(EDGE_DOCUMENTS)]
    chunks = chunk_texts(folder, kind, length, long_query, long_document)
    queries += [long_query] * len(chunks)
    documents += chunks
    want = reference_scores(folder, queries, documents, length, kind=kind)
    rows = []
    for engine, precision, device in engines:
        name = f"{engine}-{precision}" + ("" if device == "cpu" else f" ({device})")
        started = time.perf_counter()
        try:
            reranker = build_reranker(EngineConfig(engine=engine, model=model, precision=precision, device=device,
                                                   max_length=max_length, cache_dir=cache_dir),
                                      verify=False)
        except (OSError, ValueError, RuntimeError) as exc:
            refused = isinstance(exc, EngineRefused)
            rows.append(Row(name, False, time.perf_counter() - started, None, float("nan"),
                            "refused" if refused else "does not build", str(exc)))
            continue
        build_s = time.perf_counter() - started
        served = reranker.engine_name
        got = engine_scores(reranker, queries, documents)
        # Throughput on the corpus pairs (passages of 40-80 words), not the edge cases: the one
        # document far past the model's length would dominate the time.
        best = float("inf")
        for _ in range(timing_rounds):
            t0 = time.perf_counter()
            engine_scores(reranker, queries[:n_corpus], documents[:n_corpus])
            best = min(best, time.perf_counter() - t0)
        fidelity = compare(got, want, served.rsplit("-", 1)[1], n_corpus)
        note = "" if served.split("-", 1)[1] == precision else f"runs as {served}"
        # The chunked document takes its best chunk's score: the chunks above, scored as the request would.
        best_chunk = float(got[-len(chunks):].max())
        chunked = chunked_score(reranker, long_query, long_document)
        verdict = "ok" if fidelity.ok else "WRONG SCORES"
        if not chunked_agrees(chunked, best_chunk, fidelity):
            verdict, note = "WRONG SCORES", f"chunked score {chunked:.6g} is not its best chunk's {best_chunk:.6g}; {note}"
        rows.append(Row(name, True, build_s, fidelity, n_corpus / best, verdict, note))
    return rows


def print_table(model: str, kind: RerankerKind, rows: list[Row], n_pairs: int) -> None:
    table = Table(title=f"{model}: {kind.architecture} ({kind.head} head, relevance = {kind.activation}), "
                        f"{n_pairs} pairs against transformers")
    for column in ("engine", "builds", "build s", "fidelity", "pairs/s", "verdict", "note"):
        table.add_column(column, justify="right" if column in ("build s", "pairs/s") else "left")
    for row in rows:
        table.add_row(row.engine, "yes" if row.built else "no", f"{row.build_s:.1f}",
                      row.fidelity.describe() if row.fidelity else "-",
                      f"{row.pairs_per_s:.0f}" if np.isfinite(row.pairs_per_s) else "-",
                      row.verdict, row.note[:160])
    Console(width=200).print(table)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.option("--engine", "engine_specs", multiple=True, metavar="ENGINE-PRECISION[@DEVICE]",
              help="only these, e.g. onnx-int8 or torch-fp16@cuda (repeatable; default: all)")
@click.option("--max-length", type=int, help="truncation length (default: the model's)")
@click.option("--pairs", type=int, default=96, help="corpus pairs besides the edge cases (default 96)")
@click.option("--rounds", type=int, default=1, help="timed rounds per engine; pairs/s is the best (default 1)")
@click.option("--cache-dir", help="export cache (default ~/.cache/kafka-rerank)")
@click.option("--json", "json_path", help="also write the rows to this file")
def main(model: str, engine_specs: tuple[str, ...], max_length: int | None, pairs: int, rounds: int,
         cache_dir: str | None, json_path: str | None) -> None:
    """``python -m engines.check MODEL``: every engine this machine runs against transformers.

    MODEL: Hugging Face id or local folder of the reranker. Exit status 1 when an engine that builds
    would serve wrong scores.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    try:  # NNCF sets its own logger to INFO when imported and then logs each node it leaves fp32
        import nncf

        nncf.set_log_level(logging.WARNING)
    except ImportError:
        pass
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one "Loading weights" bar per engine otherwise
    transformers_logging.set_verbosity_error()
    engines = None
    if engine_specs:
        engines = []
        for spec in engine_specs:
            name, _, device = spec.partition("@")
            engine, _, precision = name.rpartition("-")
            engines.append((engine, precision, device or "cpu"))
    try:
        folder = ModelFolder.load(model)
        kind = inspect_reranker(folder)
    except (OSError, ValueError) as exc:
        click.echo(f"engines.check: {exc}", err=True)
        sys.exit(2)
    rows = run_check(model, engines, max_length, cache_dir, pairs, rounds)
    print_table(model, kind, rows, pairs + len(EDGE_DOCUMENTS) + 2 + CHECK_CHUNKS)
    if json_path:
        Path(json_path).write_text(json.dumps([
            {"engine": r.engine, "built": r.built, "build_s": r.build_s, "verdict": r.verdict, "note": r.note,
             "pairs_per_s": r.pairs_per_s if np.isfinite(r.pairs_per_s) else None,
             "max_abs": r.fidelity.max_abs if r.fidelity else None,
             "pearson": r.fidelity.pearson if r.fidelity else None} for r in rows], indent=2) + "\n")
    sys.exit(1 if any(r.built and r.verdict == "WRONG SCORES" for r in rows) else 0)


if __name__ == "__main__":
    main()
