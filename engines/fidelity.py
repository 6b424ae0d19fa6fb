"""Do an engine's scores equal the checkpoint's own transformers forward pass?

The reference is what a user of transformers computes: ``AutoModelForSequenceClassification`` (or
``AutoModelForCausalLM`` for a decoder reranker) with the model's default attention, a 2-D 0/1
mask and the model's own ``AutoTokenizer``, in fp32 on CPU. fp32 engines must be within
:data:`FP32_TOLERANCE` of it; reduced precisions (int8, bf16, fp16) must correlate with it at
:data:`PEARSON_FLOOR` or better, on pairs whose scores spread as relevant and irrelevant pairs do.

:func:`verify_engine` is the worker's start-up check (called by :func:`engines.build_reranker`);
``python -m engines.check`` runs the same comparison for every engine and prints a table.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import inspect
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.batching import BatchRunner
from engines.config import cpu_flags
from engines.corpus import load_passages, queries_with_sources
from engines.decoder import DEFAULT_MAX_LENGTH, reference_decoder_inputs
from engines.families import MARGIN, RerankerKind, inspect_reranker
from engines.models import ModelFolder, effective_max_length, making

log = logging.getLogger("engines.fidelity")

#: fp32 engines: largest allowed |score - transformers' score|.
FP32_TOLERANCE = 1e-3
#: Reduced-precision engines (int8, bf16, fp16): smallest allowed Pearson correlation with transformers.
PEARSON_FLOOR = 0.99

EDGE_DOCUMENTS = [
    "",
    "   ",
    "99999999999999 999999 9999 1234567890 000000000000",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ----------------- ==========",
    "Ünïcödé façade naïve café — déjà vu; 日本語のテキストと中文文本; Ελληνικά и русский 🚀",
]


def check_pairs(n_corpus: int = 96, seed: int = 7, long_words: int = 12_000) -> tuple[list[str], list[str]]:
    """The fixed pairs of the check: ``n_corpus`` corpus pairs (half relevant), the edge documents
    above, and one document of ``long_words`` words (past any model's length)."""
    passages = load_passages()
    rng = random.Random(seed)
    drawn = queries_with_sources(n_corpus, seed=seed)
    queries = [q for q, _ in drawn]
    docs = [passages[i] if k % 2 == 0 else passages[rng.randrange(len(passages))] for k, (_, i) in enumerate(drawn)]
    for k, doc in enumerate(EDGE_DOCUMENTS):
        queries.append(drawn[k][0])
        docs.append(doc)
    words = " ".join(passages).split()
    queries.append(drawn[0][0])
    docs.append(" ".join(words[i % len(words)] for i in range(long_words)))
    queries.append("")  # an empty query
    docs.append(passages[0])
    return queries, docs


def model_max_length(folder: ModelFolder, kind: RerankerKind, requested: int | None = None) -> int:
    """The truncation length the engines use for ``folder`` (what the reference must use too)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder.path))
    length = effective_max_length(folder, int(tokenizer.model_max_length), requested)
    if kind.decoder and requested is None:
        length = min(length, DEFAULT_MAX_LENGTH)
    return length


def reference_scores(folder: ModelFolder, queries: list[str], documents: list[str], max_length: int,
                     batch_size: int = 8, kind: RerankerKind | None = None, max_batch_tokens: int = 8192) -> np.ndarray:
    """Scores of the pairs by the checkpoint's own transformers forward pass, in fp32 on CPU:
    the logit of a one-label head, ``l1 - l0`` of a two-label head, ``logit('yes') - logit('no')``
    of a decoder reranker. Pairs are tokenized by the model's ``AutoTokenizer`` (truncation
    ``longest_first`` at ``max_length``) and run ``batch_size`` at a time, padded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    kind = kind or inspect_reranker(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder.path))
    if kind.decoder:
        model = AutoModelForCausalLM.from_pretrained(str(folder.path), dtype=torch.float32).eval()
        yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
        tokenizer.padding_side = "left"
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder.path), dtype=torch.float32).eval()
    accepted = set(inspect.signature(model.forward).parameters)
    if kind.decoder:
        encoded = reference_decoder_inputs(tokenizer, queries, documents, max_length)
    else:
        encoded = tokenizer(queries, documents, truncation="longest_first", max_length=max_length)["input_ids"]
    # Similar lengths together, at most batch_size pairs and max_batch_tokens padded tokens a batch:
    # padding is there (the mask handling is part of what is checked) but a long pair is not
    # padded against by seven short ones.
    order = sorted(range(len(queries)), key=lambda i: len(encoded[i]))
    batches, current = [], []
    for i in order:
        if current and (len(current) == batch_size or (len(current) + 1) * len(encoded[i]) > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    scores = np.empty(len(queries), dtype=np.float64)
    with torch.inference_mode():
        for rows in batches:
            q, d = [queries[i] for i in rows], [documents[i] for i in rows]
            if kind.decoder:
                batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, padding=True, return_tensors="pt")
                logits = model(**batch).logits[:, -1, :]
                scores[rows] = (logits[:, yes] - logits[:, no]).numpy()
                continue
            batch = tokenizer(q, d, padding=True, truncation="longest_first", max_length=max_length, return_tensors="pt")
            batch = {k: v for k, v in batch.items() if k in accepted}
            logits = model(**batch).logits
            scores[rows] = (logits[:, 1] - logits[:, 0] if kind.head == MARGIN else logits[:, 0]).numpy()
    return scores


def runner_scores(runner: BatchRunner, queries: list[str], documents: list[str]) -> np.ndarray:
    """Scores of the pairs by an engine's :class:`~engines.batching.BatchRunner`."""
    index = np.arange(len(queries))
    return np.asarray(runner.score_pairs([runner.pair_query(q) for q in queries], documents, index, index),
                      dtype=np.float64)


#: Reduced precisions, on the edge pairs (empty, whitespace-only, repeated characters, truncated):
#: their scores sit far out in the tails, where calibrated int8 ranges do not reach and a raw
#: difference says little, so each is held to its rank among the corpus pairs' transformers
#: scores: it may move by at most this fraction of them (an empty document scored -11 instead of
#: -16 still ranks below every corpus pair; one scored +3 would not). A difference under
#: :data:`EDGE_NEAR` standard deviations of those scores passes whatever the rank: in the dense
#: middle of the distribution a small difference moves many ranks, as it does for corpus pairs.
EDGE_RANK_SHIFT = 0.1
EDGE_NEAR = 0.5


@dataclass
class Fidelity:
    """How an engine's scores compare with transformers' on the same pairs.

    Attributes:
        max_abs: largest |engine - transformers| over all pairs.
        pearson: Pearson correlation over the corpus pairs (scores spread as a trained head's do).
        edge_rank_shift: largest move of an edge pair's rank among the corpus pairs' transformers
            scores, as a fraction of them (see :data:`EDGE_RANK_SHIFT`).
        exact_required: fp32: judged by ``max_abs``; otherwise by ``pearson`` and ``edge_rank_shift``.
    """

    max_abs: float
    pearson: float
    edge_rank_shift: float
    exact_required: bool

    @property
    def ok(self) -> bool:
        if not np.isfinite(self.max_abs):
            return False
        if self.exact_required:
            return self.max_abs <= FP32_TOLERANCE
        return self.pearson >= PEARSON_FLOOR and self.edge_rank_shift <= EDGE_RANK_SHIFT

    def describe(self) -> str:
        if self.exact_required:
            return f"max |Δ| {self.max_abs:.1e} (limit {FP32_TOLERANCE:g})"
        return (f"Pearson {self.pearson:.4f} (floor {PEARSON_FLOOR}), edge pairs' rank moved "
                f"{self.edge_rank_shift:.0%} (limit {EDGE_RANK_SHIFT:.0%}), max |Δ| {self.max_abs:.2g}")


def compare(got: np.ndarray, want: np.ndarray, precision: str, n_corpus: int | None = None) -> Fidelity:
    """Compare engine scores ``got`` with transformers' ``want``; the first ``n_corpus`` pairs are
    the corpus pairs (all of them when None), the rest edge pairs."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    n_corpus = len(want) if n_corpus is None else n_corpus
    finite = bool(np.all(np.isfinite(got)))
    diff = np.abs(got - want) if finite else np.full(len(want), np.inf)
    core_got, core_want = got[:n_corpus], want[:n_corpus]
    pearson = float(np.corrcoef(core_got, core_want)[0, 1]) if finite and np.std(core_got) > 0 else float("nan")
    ranks = np.sort(core_want)
    if finite and len(want) > n_corpus:
        shift = np.abs(np.searchsorted(ranks, got[n_corpus:]) - np.searchsorted(ranks, want[n_corpus:])) / max(1, n_corpus)
        shift[diff[n_corpus:] <= EDGE_NEAR * float(np.std(core_want))] = 0.0
        edge_rank_shift = float(shift.max())
    else:
        edge_rank_shift = 0.0 if finite else float("inf")
    return Fidelity(
        max_abs=float(diff.max()) if len(diff) else 0.0,
        pearson=pearson,
        edge_rank_shift=edge_rank_shift,
        exact_required=precision == "fp32",
    )


# -- the worker's start-up check -------------------------------------------------------------------
#: How many corpus pairs the start-up check scores (plus the edge documents and one long document).
STARTUP_PAIRS = 32
#: Words of the start-up check's long document: past a 512-token model's length and any local
#: window, but not 8k tokens of fp32 reference on CPU at every first start (the check command
#: goes past every model's length).
STARTUP_LONG_WORDS = 1024


class EngineRefused(ValueError):
    """An engine does not serve this model's scores (known beforehand, or measured at start-up).

    ``alternative`` holds the :class:`~engines.config.EngineConfig` fields that serve it instead,
    e.g. ``{"engine": "torch", "precision": "fp32"}``; the message ends by naming them.
    """

    def __init__(self, reason: str, alternative: dict[str, str]) -> None:
        self.alternative = dict(alternative)
        instead = ", ".join(f"{field}={value}" for field, value in self.alternative.items())
        super().__init__(f"{reason}; use {instead} instead" if instead else reason)


#: The libraries whose versions key a verdict: those that tokenize and run the engine. Not torch (the
#: reference) nor NNCF (which made the artefact, whose cache name carries the quantization recipe):
#: the CPU worker image has neither and must find the verdict that the prepare step, which has
#: both, wrote (the verdict records their versions).
VERDICT_LIBRARIES = ("transformers", "onnxruntime", "openvino", "tokenizers")
#: What a verdict records besides: the libraries of the reference and of the artefact's making.
RECORDED_LIBRARIES = ("torch", "nncf", *VERDICT_LIBRARIES)


def _verdict_file(cache_root: Path, folder: ModelFolder, engine: str, device: str, artefact: str) -> Path:
    """Where a pass is remembered: keyed by the model's files, the engine and the file it runs
    (whose cache name carries the export and quantization recipes), the versions of
    :data:`VERDICT_LIBRARIES`, CPU flags and the check itself."""
    versions = "|".join(_version(p) for p in VERDICT_LIBRARIES)
    flags = ",".join(sorted(cpu_flags() or ()))
    key = hashlib.sha256(f"{folder.fingerprint}|{engine}|{device}|{artefact}|{versions}|{flags}|{STARTUP_PAIRS}|"
                         f"{STARTUP_LONG_WORDS}|{FP32_TOLERANCE}|{PEARSON_FLOOR}|{EDGE_RANK_SHIFT}|{EDGE_NEAR}"
                         .encode()).hexdigest()[:20]
    return cache_root / "verified" / f"{key}.json"


def _version(package: str) -> str:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "-"


def verify_engine(runner: BatchRunner, engine_name: str, folder: ModelFolder, kind: RerankerKind, cache_root: Path,
                  alternative: dict[str, str]) -> Fidelity | None:
    """Score a handful of pairs with the built engine and with transformers; raise
    :class:`EngineRefused` naming ``alternative`` (EngineConfig fields) when they disagree beyond
    the tolerance.

    The torch engine is not checked: it *is* the transformers forward pass (in fp32; bf16 and
    fp16 only round it), and a decoder reranker, which only torch serves, can be far too large
    for an fp32 reference on the CPU at start-up (``python -m engines.check`` measures them). A passing
    verdict is remembered under ``cache_root/verified`` (keyed by the model's files, the engine,
    the library versions and the CPU's flags), so later starts skip the check.
    """
    runtime, precision = engine_name.rsplit("-", 1)
    device = runner.backend.device
    if runtime == "torch":
        return None
    marker = _verdict_file(cache_root, folder, engine_name, device, str(getattr(runner.backend, "path", "")))
    if marker.is_file():
        return None
    max_length = runner.max_length
    queries, documents = check_pairs(STARTUP_PAIRS, long_words=min(3 * max_length, STARTUP_LONG_WORDS))
    started = time.perf_counter()
    with making(f"the start-up check of {engine_name} on {folder.name!r} (no verdict in {marker.parent})"):
        want = reference_scores(folder, queries, documents, max_length, kind=kind)
    got = runner_scores(runner, queries, documents)
    fidelity = compare(got, want, precision, STARTUP_PAIRS)
    log.info("start-up check of %s on %s: %s (%.1f s)", engine_name, folder.name, fidelity.describe(),
             time.perf_counter() - started)
    if not fidelity.ok:
        raise EngineRefused(
            f"engine {engine_name} does not reproduce model {folder.name!r} ({kind.architecture}): "
            f"{fidelity.describe()} on {len(queries)} pairs against transformers "
            f"(python -m engines.check {folder.name} shows every engine)", alternative)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"model": folder.name, "engine": engine_name, "device": device,
                                  "fidelity": fidelity.describe(),
                                  "versions": {p: _version(p) for p in RECORDED_LIBRARIES}}) + "\n")
    return fidelity


