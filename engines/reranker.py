"""The reranker: one window of requests in, one outcome per request out.

A window is scored in two stages, each batched across all its requests:

1. **Prefilter** (requests with more than ``prefilter_threshold`` documents, or forced): a first
   stage (:mod:`engines.first_stage`: the job's ``method``, else ``prefilter_method``; ``static``
   embeddings, ``bm25``, the ``client``'s own scores, the ``bi-encoder``, or ``static+bm25``)
   scores every document, and only the ``keep`` best go on to the cross-encoder; the others keep
   their first-stage score and follow, in that score's order.
2. **Cross-encoder**: every remaining (query, document) pair of the window is tokenized once,
   length-sorted, cut into token-budget micro-batches, run, and scattered back to its request.

Texts are tokenized once for both stages: the window's :class:`~engines.batching.TokenCache` is
filled with the cross-encoder's tokenizer; ``bm25`` reads it, ``static`` and the bi-encoder read
it when their tokenizer is the same one (compared by signature, not assumed), and the
cross-encoder then reuses what the first stage read.

Example::

    from engines import EngineConfig, RerankJob, build_reranker

    reranker = build_reranker(EngineConfig(model="cross-encoder/ms-marco-MiniLM-L-6-v2"))
    reranker.warmup()
    [outcome] = reranker.rerank([RerankJob("how do I open a file", ["open() returns a file object", "..."])])
    best_first = outcome.order
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.batching import BatchRunner, TokenCache
from engines.bi_encoder import BiEncoder
from engines.config import (
    CPU_MAX_BATCH_PAIRS,
    CPU_MAX_BATCH_TOKENS,
    GPU_MAX_BATCH_PAIRS,
    GPU_MAX_BATCH_TOKENS,
    EngineConfig,
    cpu_budget,
    cpu_has_int8_dot_product,
    openmp_wait_policy,
    resolve_cache_dir,
    resolve_device,
    resolve_precision,
)
from engines.decoder import DEFAULT_MAX_LENGTH, DecoderBatchRunner
from engines.export import ExportCache
from engines.first_stage import (
    BI_ENCODER,
    BM25,
    CLIENT,
    METHODS,
    SCORE_KINDS,
    STATIC,
    STATIC_BM25,
    BiEncoderStage,
    Bm25Stage,
    ClientStage,
    FirstStage,
    FusionStage,
    StageJob,
    ranked,
)
from engines.families import SIGMOID, RerankerKind, inspect_reranker, refusal
from engines.fidelity import EngineRefused, verify_engine
from engines.models import ModelFolder, effective_max_length, load_fast_tokenizer, packaged_minilm_path
from engines.onnx_engine import OnnxBackend
from engines.openvino_engine import OpenVinoBackend
from engines.static_embeddings import STATIC_DIRNAME, StaticEmbeddings, StaticStage, ensure_static_model
from engines.torch_engine import CROSS, EMBED, TorchBackend

log = logging.getLogger("engines")

LOGIT = "logit"
COSINE = "cosine"


@dataclass
class RerankJob:
    """One request: a query and the documents to rank for it.

    Attributes:
        query: the query text.
        documents: the candidate texts, in the caller's order (indices refer to it).
        prefilter: ``True``/``False`` forces the prefilter on/off; ``None`` applies it when there
            are more than ``prefilter_threshold`` documents.
        keep: how many documents the prefilter passes to the cross-encoder
            (``None`` = ``prefilter_keep`` of the config).
        method: the prefilter's first stage, one of :data:`engines.first_stage.METHODS`
            (``None`` = ``prefilter_method`` of the config).
        scores: the caller's own first-stage score of each document (``None`` where it has
            none); read only by the ``client`` method, which needs a finite one for every
            document of a job it cuts (else ``ValueError``: no guessing).
    """

    query: str
    documents: list[str]
    prefilter: bool | None = None
    keep: int | None = None
    method: str | None = None
    scores: Sequence[float | None] | None = None


@dataclass
class RerankOutcome:
    """Scores and ranking of one job.

    Attributes:
        scores: float32, one per document in the job's order. Where ``cross_encoded`` is True it is
            the cross-encoder's raw logit (apply a sigmoid for a 0-1 score); elsewhere it is the
            first stage's score (a cosine for ``static`` and ``bi-encoder``, a BM25 score, the
            caller's score, or a reciprocal-rank-fusion score).
        score_kind: ``"logit"`` when the cross-encoder scored documents; otherwise what the first
            stage's scores are (:data:`engines.first_stage.SCORE_KINDS`; ``"cosine"`` for the
            ``bi-encoder`` engine).
        cross_encoded: bool mask of the documents the cross-encoder scored.
        order: document indices, best first: cross-encoded ones by score descending (ties by
            index), then the rest by first-stage score descending (ties by index).
        prefiltered: whether a first stage cut this job before cross-encoding.
        bi_encoder_scored: how many documents the bi-encoder scored.
        cross_encoder_scored: how many documents the cross-encoder scored.
        first_stage: the method that cut this job (``None`` when none did).
        activation: what turns a ``"logit"`` score into the model's relevance, as
            sentence-transformers applies it (``"sigmoid"``, ``"identity"`` or ``"tanh"``; see
            :func:`engines.families.activate`). A two-logit head's score is the margin ``l1 - l0``
            and a decoder's is ``logit('yes') - logit('no')``; both take a sigmoid.
    """

    scores: np.ndarray
    score_kind: str
    cross_encoded: np.ndarray
    order: np.ndarray
    prefiltered: bool
    bi_encoder_scored: int = 0
    cross_encoder_scored: int = 0
    first_stage: str | None = None
    activation: str = SIGMOID


@dataclass
class _Plan:
    n: int
    prefilter: bool
    keep: int
    method: str
    client_scores: np.ndarray | None = None


@dataclass
class StageStats:
    """What one first stage cost since the last reset."""

    calls: int = 0
    jobs: int = 0
    documents: int = 0
    seconds: float = 0.0  # its tokenizing included

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _client_scores(index: int, job: RerankJob) -> np.ndarray:
    """The job's scores as float64, NaN where there is none; a ``ValueError`` naming the first
    document without a finite score when any lacks one."""
    n = len(job.documents)
    if job.scores is not None and len(job.scores) != n:
        raise ValueError(f"job {index}: {len(job.scores)} scores for {n} documents")
    scores = np.full(n, np.nan) if job.scores is None else np.array(
        [np.nan if s is None else float(s) for s in job.scores], dtype=np.float64)
    unusable = np.flatnonzero(~np.isfinite(scores))
    if len(unusable):
        raise ValueError(f"job {index}: prefilter method 'client' needs a finite score for every document; "
                         f"{len(unusable)} of {n} have none (first: document {int(unusable[0])})")
    return scores


class Reranker:
    """Scores windows of :class:`RerankJob`. Build it with :func:`build_reranker`.

    ``rerank`` is meant to be called from one thread at a time (the worker's engine thread).

    Attributes:
        engine_name: what runs, e.g. ``"openvino-int8"``, ``"onnx-fp32"``, ``"torch-fp16"``,
            ``"bi-encoder-openvino-int8"``.
        model_name: the configured cross-encoder (or bi-encoder) id/folder, as given.
        device: ``"cpu"`` or ``"cuda"``: where the cross-encoder (or bi-encoder) actually runs.
        kind: what the cross-encoder is (:class:`engines.families.RerankerKind`), None for the
            bi-encoder engine.
        activation: what turns the cross-encoder's score into relevance (the model's
            sentence-transformers activation: ``"sigmoid"``, ``"identity"`` or ``"tanh"``).
    """

    def __init__(self, config: EngineConfig, cross: BatchRunner | None, bi_encoder: BiEncoder | None, device: str,
                 kind: RerankerKind | None = None):
        self.config = config
        self.kind = kind
        self.activation = kind.activation if kind is not None else SIGMOID
        self._cross = cross
        self._bi_encoder = bi_encoder
        self.device = device
        if cross is not None:
            backend = cross.backend
            self.engine_name = f"{backend.runtime}-{backend.precision}"
            self.model_name = config.model
        else:
            backend = bi_encoder.runner.backend
            self.engine_name = f"bi-encoder-{backend.runtime}-{backend.precision}"
            self.model_name = config.prefilter_model or "sentence-transformers/all-MiniLM-L6-v2"
        self._stages: dict[str, FirstStage] = {}
        self._static: StaticEmbeddings | None = None
        self.rerank_s = 0.0  # wall time spent in rerank(), for benchmarks
        self.stage_stats: dict[str, StageStats] = {}
        self.first_stage_tokenize_s = 0.0  # tokenizing for the first stages, which the cross-encoder reuses

    # -- stages ---------------------------------------------------------------------------------
    @property
    def bi_encoder(self) -> BiEncoder:
        """The prefilter's bi-encoder, built on first use (``warmup`` builds it ahead)."""
        if self._bi_encoder is None:
            self._bi_encoder = _build_bi_encoder(self.config, self.device, runtime_hint=self._cross.backend.runtime)
        return self._bi_encoder

    @property
    def static_embeddings(self) -> StaticEmbeddings:
        """The ``static`` first stage's model: distilled on first use ever (minutes; then cached
        on disk), loaded on first use (``warmup`` does both ahead)."""
        if self._static is None:
            folder = ensure_static_model(resolve_cache_dir(self.config) / "models" / STATIC_DIRNAME)
            self._static = StaticEmbeddings(folder, ModelFolder.load(str(packaged_minilm_path())))
        return self._static

    def first_stage(self, method: str) -> FirstStage:
        """The first stage of ``method`` (one of :data:`engines.first_stage.METHODS`), built on first use."""
        if method not in self._stages:
            if method == BI_ENCODER:
                stage: FirstStage = BiEncoderStage(lambda: self.bi_encoder)
            elif method == STATIC:
                stage = StaticStage(self.static_embeddings)
            elif method == BM25:
                stage = Bm25Stage()
            elif method == CLIENT:
                stage = ClientStage()
            elif method == STATIC_BM25:
                stage = FusionStage(STATIC_BM25, [self.first_stage(STATIC), self.first_stage(BM25)])
            else:
                raise ValueError(f"unknown prefilter method {method!r}; known: {', '.join(METHODS)}")
            self._stages[method] = stage
        return self._stages[method]

    def _plan(self, index: int, job: RerankJob) -> _Plan:
        if not isinstance(job.query, str):
            raise ValueError(f"job {index}: query must be a string, got {type(job.query).__name__}")
        if isinstance(job.documents, str) or any(not isinstance(d, str) for d in job.documents):
            raise ValueError(f"job {index}: documents must be a list of strings")
        n = len(job.documents)
        keep = self.config.prefilter_keep if job.keep is None else int(job.keep)
        if keep < 0:
            raise ValueError(f"job {index}: keep must be >= 0, got {keep}")
        method = job.method or self.config.prefilter_method
        if method not in METHODS:
            raise ValueError(f"job {index}: unknown prefilter method {method!r}; known: {', '.join(METHODS)}")
        if self._cross is None:
            return _Plan(n, False, n, BI_ENCODER)
        wanted = job.prefilter if job.prefilter is not None else n > self.config.prefilter_threshold
        # With keep >= n nothing would be cut, so the first stage would be wasted work.
        plan = _Plan(n, bool(wanted) and keep < n, keep, method)
        if plan.prefilter and method == CLIENT:
            plan.client_scores = _client_scores(index, job)
        return plan

    def rerank(self, jobs: list[RerankJob]) -> list[RerankOutcome]:
        """Score one window of jobs, batched together; one outcome per job, in order."""
        started = time.perf_counter()
        if not jobs:
            return []
        plans = [self._plan(i, job) for i, job in enumerate(jobs)]
        if self._cross is None:
            cosines = self._first_stage_scores(BI_ENCODER, jobs, plans, list(range(len(jobs))), None)
            outcomes = [self._cosine_outcome(cosines[i]) for i in range(len(jobs))]
            self.rerank_s += time.perf_counter() - started
            return outcomes

        tokens = self._cross.encoder.new_cache()
        first: dict[int, np.ndarray] = {}
        for method in dict.fromkeys(p.method for p in plans if p.prefilter):
            which = [i for i, p in enumerate(plans) if p.prefilter and p.method == method]
            first.update(self._first_stage_scores(method, jobs, plans, which, tokens))
        self.first_stage_tokenize_s += tokens.seconds

        selected: list[np.ndarray] = []
        for i, plan in enumerate(plans):
            if plan.prefilter:
                selected.append(np.sort(ranked(np.arange(plan.n), first[i])[: plan.keep]))
            else:
                selected.append(np.arange(plan.n))
        logits = self._cross_scores(jobs, selected, tokens)

        outcomes = []
        for i, plan in enumerate(plans):
            chosen, chosen_logits = selected[i], logits[i]
            scores = np.zeros(plan.n, dtype=np.float32)
            mask = np.zeros(plan.n, dtype=bool)
            mask[chosen] = True
            scores[chosen] = chosen_logits
            order = ranked(chosen, chosen_logits)
            if plan.prefilter:
                rest = np.flatnonzero(~mask)
                scores[rest] = first[i][rest]
                order = np.concatenate([order, ranked(rest, first[i][rest])])
            outcomes.append(
                RerankOutcome(
                    scores=scores,
                    score_kind=LOGIT if len(chosen) or not plan.prefilter else SCORE_KINDS[plan.method],
                    cross_encoded=mask,
                    order=order.astype(np.int64),
                    prefiltered=plan.prefilter,
                    bi_encoder_scored=plan.n if plan.prefilter and plan.method == BI_ENCODER else 0,
                    cross_encoder_scored=len(chosen),
                    first_stage=plan.method if plan.prefilter else None,
                    activation=self.activation,
                )
            )
        self.rerank_s += time.perf_counter() - started
        return outcomes

    def _first_stage_scores(self, method: str, jobs: list[RerankJob], plans: list[_Plan], which: list[int],
                            tokens: TokenCache | None) -> dict[int, np.ndarray]:
        """First-stage scores of the jobs ``which`` by ``method``, all of them in one call."""
        stage = self.first_stage(method)
        tick = time.perf_counter()
        scores = stage.score([StageJob(jobs[i].query, jobs[i].documents, plans[i].client_scores) for i in which], tokens)
        stats = self.stage_stats.setdefault(method, StageStats())
        stats.calls += 1
        stats.jobs += len(which)
        stats.documents += sum(plans[i].n for i in which)
        stats.seconds += time.perf_counter() - tick
        return dict(zip(which, scores))

    def _cross_scores(self, jobs: list[RerankJob], selected: list[np.ndarray], tokens: TokenCache | None) -> list[np.ndarray]:
        """Cross-encoder logits of the selected documents of every job, as one batch of pairs."""
        query_index: dict[str, int] = {}
        doc_index: dict[str, int] = {}
        pair_query, pair_doc, owners = [], [], []
        for i, chosen in enumerate(selected):
            q = query_index.setdefault(jobs[i].query, len(query_index))
            docs = jobs[i].documents
            for d in chosen:
                pair_query.append(q)
                pair_doc.append(doc_index.setdefault(docs[int(d)], len(doc_index)))
            owners.append(len(chosen))
        # Identical (query, document) pairs in a window are scored once.
        pairs = np.stack([np.asarray(pair_query, dtype=np.int64), np.asarray(pair_doc, dtype=np.int64)], axis=1)
        if len(pairs):
            unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
            logits = self._cross.score_pairs(list(query_index), list(doc_index), unique[:, 0], unique[:, 1], tokens)
            flat = logits[inverse.reshape(-1)]
        else:
            flat = np.zeros(0, dtype=np.float32)
        out, at = [], 0
        for count in owners:
            out.append(flat[at : at + count].astype(np.float32))
            at += count
        return out

    def _cosine_outcome(self, cosine: np.ndarray) -> RerankOutcome:
        n = len(cosine)
        return RerankOutcome(
            scores=cosine.astype(np.float32),
            score_kind=COSINE,
            cross_encoded=np.zeros(n, dtype=bool),
            order=ranked(np.arange(n), cosine).astype(np.int64),
            prefiltered=False,
            bi_encoder_scored=n,
            cross_encoder_scored=0,
        )

    # -- lifecycle --------------------------------------------------------------------------------
    def warmup(self) -> None:
        """Load everything (every first stage too: a request may ask for any) and run a few batch
        shapes, so the first real window does not pay for exports, quantization, the static
        model's distillation or kernel compilation."""
        words = "the quick brown fox jumps over the lazy dog while the cat sleeps".split()
        documents = [" ".join(words[: 1 + (k % len(words))] * (1 + k // 4)) for k in range(12)]
        jobs = [RerankJob("warm up query", documents), RerankJob("another warm up", documents[:3])]
        if self._cross is not None:
            jobs += [RerankJob("warm up the prefilter", documents, prefilter=True, keep=4, method=method,
                               scores=[float(k) for k in range(len(documents))]) for method in METHODS]
        self.rerank(jobs)
        self.reset_stats()

    def stats(self) -> dict:
        """Counters since the last reset: tokenize/run seconds of the cross-encoder and the
        bi-encoder, seconds and documents of each first stage (``first_stages``), the tokenizing
        done for the first stages, which the cross-encoder then reuses (``first_stage_tokenize_s``,
        part of the first stages' seconds), and embedding cache use."""
        out = {"rerank_s": self.rerank_s, "first_stages": {m: s.as_dict() for m, s in self.stage_stats.items()},
               "first_stage_tokenize_s": self.first_stage_tokenize_s}
        if self._cross is not None:
            out["cross"] = self._cross.stats.as_dict()
        if self._bi_encoder is not None:
            out["bi_encoder"] = self._bi_encoder.runner.stats.as_dict()
            out["embedding_cache"] = {"hits": self._bi_encoder.hits, "misses": self._bi_encoder.misses}
        return out

    def reset_stats(self) -> None:
        self.rerank_s = 0.0
        self.stage_stats.clear()
        self.first_stage_tokenize_s = 0.0
        for runner in (self._cross, self._bi_encoder.runner if self._bi_encoder else None):
            if runner is not None:
                runner.stats.__init__()
        if self._bi_encoder is not None:
            self._bi_encoder.hits = self._bi_encoder.misses = 0


# -- construction ---------------------------------------------------------------------------------
def _threads(config: EngineConfig, runtime: str, task: str, device: str) -> int | None:
    """Intra-op threads on CPU (``None`` on a GPU: the runtime's own default), said in the log with
    where the figure came from: the one line that explains a worker's CPU use."""
    if device != "cpu":
        return None
    budget = cpu_budget()
    pinning = "pinned to cores" if config.cpu_pinning else "not pinned"
    if config.threads:
        log.info("%s %s: threads %d as configured, %s; this process may use %s",
                 runtime, task, config.threads, pinning, budget.describe())
        if config.threads > budget.threads:
            log.warning("%s %s: %d threads but only %d CPUs' worth to run them on: expect CPU throttling",
                        runtime, task, config.threads, budget.threads)
        return config.threads
    log.info("%s %s: %s, %s", runtime, task, budget.describe(), pinning)
    return budget.threads


def _make_runner(config: EngineConfig, folder: ModelFolder, task: str, runtime: str, device: str, max_length: int | None,
                 kind: RerankerKind | None = None) -> BatchRunner:
    tokenizer, tokenizer_max, pad_id = load_fast_tokenizer(folder)
    length = effective_max_length(folder, tokenizer_max, max_length)
    if kind is not None and kind.decoder and max_length is None:
        length = min(length, DEFAULT_MAX_LENGTH)
    threads = _threads(config, runtime, task, device)
    cache_root = resolve_cache_dir(config)
    precision = resolve_precision(config.precision, runtime, device)
    if config.precision == "auto":
        log.info("precision auto: %s for %s on %s (CPU has VNNI/AMX int8: %s)",
                 precision, runtime, device, cpu_has_int8_dot_product())
    pinning = config.cpu_pinning
    if runtime == "torch":
        backend = TorchBackend(folder, task, device, precision, threads)
    else:
        cache = ExportCache(folder, task, cache_root)
        if runtime == "onnx":
            backend = OnnxBackend(cache, device, precision, threads, cpu_pinning=pinning)
        else:
            backend = OpenVinoBackend(cache, tokenizer, length, pad_id, device, precision, threads, cpu_pinning=pinning)
    on_gpu = backend.device == "cuda"
    runner_class = DecoderBatchRunner if kind is not None and kind.decoder else BatchRunner
    return runner_class(
        tokenizer,
        backend,
        max_length=length,
        pad_id=pad_id,
        max_batch_tokens=config.max_batch_tokens or (GPU_MAX_BATCH_TOKENS if on_gpu else CPU_MAX_BATCH_TOKENS),
        max_batch_pairs=config.max_batch_pairs or (GPU_MAX_BATCH_PAIRS if on_gpu else CPU_MAX_BATCH_PAIRS),
    )


def _build_bi_encoder(config: EngineConfig, device: str, runtime_hint: str | None) -> BiEncoder:
    name = config.prefilter_model or str(packaged_minilm_path())
    folder = ModelFolder.load(name)
    if config.prefilter_runtime:
        runtime = config.prefilter_runtime
    elif runtime_hint:
        runtime = runtime_hint
    else:
        runtime = "torch" if device == "cuda" else "openvino"
    settings = folder.read_json("sentence_bert_config.json") or {}
    runner = _make_runner(config, folder, EMBED, runtime, device, settings.get("max_seq_length"))
    return BiEncoder(runner, config.embedding_cache_size)


def build_reranker(config: EngineConfig, verify: bool = True) -> Reranker:
    """Load (exporting and quantizing on first use, then from the cache) what ``config`` asks for.

    With ``verify`` (the default), a cross-encoder engine other than torch is first checked
    against the model's own transformers forward pass on a handful of pairs
    (:func:`engines.fidelity.verify_engine`; a pass is remembered in the cache).

    Raises:
        EngineRefused (a ValueError): this engine does not serve this model's scores (known for
            the family, or measured by the check); the message names the engine to use instead.
        ValueError: a config field is out of range, or the model is not a reranker the service
            serves (more than two labels, not a sequence classifier or yes/no decoder).
        OSError: the model (or the prefilter model) cannot be found or loaded; the message names it.
    """
    config.validate()
    openmp_wait_policy(config.cpu_pinning)  # before resolve_device, whose CUDA check loads torch
    device = resolve_device(config.device)
    if config.engine == "bi-encoder":
        bi_encoder = _build_bi_encoder(config, device, runtime_hint=None)
        reranker = Reranker(config, None, bi_encoder, bi_encoder.runner.backend.device)
    else:
        folder = ModelFolder.load(config.model)
        kind = inspect_reranker(folder)
        precision = resolve_precision(config.precision, config.engine, device)
        refused = refusal(kind, config.engine, precision, device)
        if refused:
            raise EngineRefused(f"model {config.model!r} ({kind.architecture}): {refused}")
        cross = _make_runner(config, folder, CROSS, config.engine, device, config.max_length, kind)
        reranker = Reranker(config, cross, None, cross.backend.device, kind)
        if verify:
            verify_engine(cross, reranker.engine_name, folder, kind, resolve_cache_dir(config),
                          alternative_engine(config.engine, cross.backend.precision, cross.backend.device))
    log.info("engine %s ready: model %s on %s", reranker.engine_name, reranker.model_name, reranker.device)
    return reranker


def alternative_engine(runtime: str, precision: str, device: str) -> str:
    """What to run instead of an engine that fails the start-up check: the same runtime in fp32
    when a reduced precision failed, else the torch engine (the transformers forward pass itself)."""
    if precision != "fp32" and runtime != "torch":
        return f"RERANK_ENGINE={runtime} RERANK_PRECISION=fp32"
    return "RERANK_ENGINE=torch RERANK_PRECISION=fp32" + (" (or fp16 on CUDA)" if device == "cuda" else "")
