"""The reranker: one window of requests in, one outcome per request out.

A window is scored in two stages, each batched across all its requests:

1. **Prefilter** (which jobs, by which method, keeping how many: :mod:`engines.policy` decides): a
   first stage (:mod:`engines.first_stage`: ``static`` embeddings, ``bm25``, the ``client``'s own
   scores, the ``bi-encoder``, or ``static+bm25``) scores every document, and only the ``keep``
   best go on to the cross-encoder; the others keep their first-stage score and follow, in that
   score's order.
2. **Cross-encoder**: every remaining (query, document) pair of the window is tokenized once,
   length-sorted, cut into token-budget micro-batches, run, and scattered back to its request.

Each job's outcome (:mod:`engines.outcome`) carries the relevance its caller reads and the
response order.

Texts are tokenized once for both stages: the window's :class:`~engines.batching.TokenCache` is
filled with the cross-encoder's tokenizer; ``static`` and the bi-encoder read it when their
tokenizer is the same one (compared by signature, not assumed), and the cross-encoder then reuses
what the first stage read. ``bm25`` reads words, so behind it the cross-encoder's tokenizer runs
only on the documents kept. :meth:`Reranker.rank_first_stage` runs a first stage alone.

Example::

    from engines import EngineConfig, RerankJob, build_reranker

    reranker = build_reranker(EngineConfig(model="cross-encoder/ms-marco-MiniLM-L-6-v2"))
    reranker.warmup()
    [outcome] = reranker.rerank([RerankJob("how do I open a file", ["open() returns a file object", "..."])])
    best_first = outcome.order  # outcome.relevance[best_first[0]] is the best score
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
    CPU_MAX_BACKLOG_BATCH_TOKENS,
    CPU_MAX_BATCH_PAIRS,
    CPU_MAX_BATCH_TOKENS,
    GPU_MAX_BACKLOG_BATCH_TOKENS,
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
    BiEncoderStage,
    Bm25Stage,
    ClientStage,
    FirstStage,
    FirstStageRanking,
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
from engines.chunking import JobTexts, job_texts, texts_outcome
from engines.outcome import RerankOutcome, cosine_outcome
from engines.policy import JobPlan, JobRefused, RerankJob, plan_job
from engines.torch_engine import CROSS, EMBED, TorchBackend
from vocabulary import BI_ENCODER, BM25, CLIENT, PREFILTER_METHODS, STATIC, STATIC_BM25

log = logging.getLogger("engines")

@dataclass
class StageStats:
    """What one first stage cost since the last reset."""

    calls: int = 0
    jobs: int = 0
    documents: int = 0
    seconds: float = 0.0  # its tokenizing included

    def as_dict(self) -> dict:
        return dict(self.__dict__)


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
    def cross_encoder(self) -> BatchRunner | None:
        """The cross-encoder's batch runner (None for the bi-encoder engine)."""
        return self._cross

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
        """The first stage of ``method`` (one of :data:`vocabulary.PREFILTER_METHODS`), built on first use."""
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
                stage = FusionStage(STATIC_BM25, [self.first_stage(STATIC), self.first_stage(BM25)],
                                    threads=self._cross.encoder.threads if self._cross is not None else 1)
            else:
                raise ValueError(f"unknown prefilter method {method!r}; known: {', '.join(PREFILTER_METHODS)}")
            self._stages[method] = stage
        return self._stages[method]

    def rank_first_stage(self, query: str, documents: Sequence[str], method: str | None = None,
                         scores: Sequence[float | None] | None = None) -> FirstStageRanking:
        """One first stage alone over one request's documents, as a prefilter would rank them
        before keeping the best: ``method`` is one of :data:`vocabulary.PREFILTER_METHODS`
        (``config.prefilter_method`` when None), ``scores`` the caller's own (for ``client``).

        Example::

            ranking = reranker.rank_first_stage("how do I open a file", documents, method="bm25")
            top_100 = ranking.order[:100]

        Raises:
            JobRefused (a ValueError): the request cannot be ranked so (the message says why).
        """
        if self._cross is None:
            raise JobRefused("the bi-encoder engine has no first stage: it ranks every document by cosine "
                             "(Reranker.rerank); a first stage runs in front of a cross-encoder engine")
        job = RerankJob(query, list(documents), prefilter=True, keep=0, method=method, scores=scores)
        plan = self.plan(job)
        tokens = self._cross.encoder.new_cache()
        [first] = self.score_first_stage(plan.method, [job], [plan], tokens)
        return FirstStageRanking(plan.method, first, ranked(np.arange(len(first)), first))

    def plan(self, job: RerankJob) -> JobPlan:
        """What this engine will do with ``job`` (:func:`engines.policy.plan_job`): whether it is
        prefiltered, how, and the pairs it costs. Raises :class:`~engines.policy.JobRefused` for a
        job it would not score."""
        cross = self._cross
        if cross is None:
            return plan_job(job, self.config, cross_encoder=False)
        return plan_job(job, self.config, document_budget=cross.text_budget, takes_instruction=cross.takes_instruction)

    def rerank(self, jobs: list[RerankJob], plans: list[JobPlan] | None = None) -> list[RerankOutcome]:
        """Score one window of jobs, batched together; one outcome per job, in order. ``plans``
        are the jobs' :meth:`plan` when the caller has them already.

        Raises:
            JobRefused (a ValueError): a job cannot be scored; the message names it.
        """
        started = time.perf_counter()
        if not jobs:
            return []
        if plans is None:
            plans = []
            for i, job in enumerate(jobs):
                try:
                    plans.append(self.plan(job))
                except JobRefused as refused:
                    raise JobRefused(f"job {i}: {refused}") from None
        if self._cross is None:
            cosines = self._first_stage_scores(BI_ENCODER, jobs, plans, list(range(len(jobs))), None)
            outcomes = [cosine_outcome(cosines[i]) for i in range(len(jobs))]
        else:
            outcomes = self._cross_encode(jobs, plans)
        self.rerank_s += time.perf_counter() - started
        return outcomes

    def _cross_encode(self, jobs: list[RerankJob], plans: list[JobPlan]) -> list[RerankOutcome]:
        """Both stages: each first stage over the jobs it cuts, then the cross-encoder over
        every kept pair of the window."""
        tokens = self._cross.encoder.new_cache()
        first: dict[int, np.ndarray] = {}
        for method in dict.fromkeys(p.method for p in plans if p.prefilter):
            which = [i for i, p in enumerate(plans) if p.method == method]
            first.update(self._first_stage_scores(method, jobs, plans, which, tokens))
        self.first_stage_tokenize_s += tokens.seconds

        selected = [np.sort(ranked(np.arange(plan.documents), first[i])[: plan.keep]) if plan.prefilter
                    else np.arange(plan.documents) for i, plan in enumerate(plans)]
        texts = [job_texts(self._cross, job.query, plan.instruction, job.documents, chosen, plan.chunking, tokens)
                 for job, plan, chosen in zip(jobs, plans, selected)]
        logits = self._cross_scores(texts, tokens)
        return [texts_outcome(plan, texts[i], logits[i], first.get(i), self.activation, jobs[i].raw_scores)
                for i, plan in enumerate(plans)]

    def _first_stage_scores(self, method: str, jobs: list[RerankJob], plans: list[JobPlan], which: list[int],
                            tokens: TokenCache | None) -> dict[int, np.ndarray]:
        """First-stage scores of the jobs ``which`` by ``method``, all of them in one call."""
        scores = self.score_first_stage(method, [jobs[i] for i in which], [plans[i] for i in which], tokens)
        return dict(zip(which, scores))

    def score_first_stage(self, method: str, jobs: list[RerankJob], plans: list[JobPlan],
                          tokens: TokenCache | None) -> list[np.ndarray]:
        """Scores of every document of ``jobs`` by the first stage ``method``, in one call (its
        cost is counted in ``stage_stats``); ``tokens``: the cross-encoder's token cache it may
        read and fill."""
        stage = self.first_stage(method)
        tick = time.perf_counter()
        scores = stage.score([StageJob(job.query, job.documents, plan.client_scores) for job, plan in zip(jobs, plans)],
                             tokens)
        stats = self.stage_stats.setdefault(method, StageStats())
        stats.calls += 1
        stats.jobs += len(jobs)
        stats.documents += sum(plan.documents for plan in plans)
        stats.seconds += time.perf_counter() - tick
        return scores

    def _cross_scores(self, texts: list[JobTexts], tokens: TokenCache | None = None) -> list[np.ndarray]:
        """Cross-encoder logits of the pairs of every job, as one batch of pairs."""
        query_index: dict[str, int] = {}
        doc_index: dict[str, int] = {}
        pair_query, pair_doc, owners = [], [], []
        for job in texts:
            q = query_index.setdefault(job.query, len(query_index))
            for text in job.texts:
                pair_query.append(q)
                pair_doc.append(doc_index.setdefault(text, len(doc_index)))
            owners.append(len(job.texts))
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

    # -- lifecycle --------------------------------------------------------------------------------
    def warmup(self, first_stages: Sequence[str] = PREFILTER_METHODS) -> None:
        """Load the engine and ``first_stages`` (all by default: a request may ask for any) and run a
        few batch shapes, so the first real request does not pay for exports, quantization, the
        static model's distillation or kernel compilation; then clear the counters."""
        self.rerank(warm_jobs(first_stages, cross_encoder=self._cross is not None))
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


#: Texts of growing length, so that several batch shapes are run (and compiled) before real traffic.
_WARM_TEXT = "a request to rank documents by how well each answers a query about files sockets and threads"


def warm_jobs(first_stages: Sequence[str], cross_encoder: bool = True) -> list[RerankJob]:
    """A few requests that load and run the engine, and each of ``first_stages`` on a prefiltered
    request (the first stages need a cross-encoder to feed)."""
    words = _WARM_TEXT.split()
    documents = [" ".join(words[: 2 + k]) * (1 + k // 5) for k in range(len(words) - 2)]
    jobs = [RerankJob("which document is about sockets", documents), RerankJob("files and threads", documents[:4])]
    if cross_encoder:
        scores = [float(-k) for k in range(len(documents))]
        jobs += [RerankJob(f"warm the {method} first stage", documents, prefilter=True, keep=3, method=method,
                           scores=scores) for method in first_stages]
    return jobs


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
            backend = OnnxBackend(cache, tokenizer, length, pad_id, device, precision, threads, cpu_pinning=pinning)
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
        max_backlog_batch_tokens=config.max_backlog_batch_tokens
        or (GPU_MAX_BACKLOG_BATCH_TOKENS if on_gpu else CPU_MAX_BACKLOG_BATCH_TOKENS),
        tokenize_threads=threads or cpu_budget().threads,  # the inference threads figure, on the CPU
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
            raise EngineRefused(f"model {config.model!r} ({kind.architecture}): {refused}", {"engine": "torch"})
        cross = _make_runner(config, folder, CROSS, config.engine, device, config.max_length, kind)
        reranker = Reranker(config, cross, None, cross.backend.device, kind)
        if verify:
            verify_engine(cross, reranker.engine_name, folder, kind, resolve_cache_dir(config),
                          alternative_engine(config.engine, cross.backend.precision, cross.backend.device))
    log.info("engine %s ready: model %s on %s", reranker.engine_name, reranker.model_name, reranker.device)
    return reranker


def alternative_engine(runtime: str, precision: str, device: str) -> dict[str, str]:
    """What to run instead of an engine that fails the start-up check, as EngineConfig fields:
    the same runtime in fp32 when a reduced precision failed, else the torch engine (the
    transformers forward pass itself; fp16 on CUDA)."""
    if precision != "fp32" and runtime != "torch":
        return {"engine": runtime, "precision": "fp32"}
    return {"engine": "torch", "precision": "fp16" if device == "cuda" else "fp32"}
