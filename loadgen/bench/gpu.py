"""``python -m loadgen.bench.gpu``: one short, prepared GPU benchmark of the cross-encoder.

On a CUDA machine (it installs nothing and needs no network; torch, transformers,
sentence-transformers and onnxruntime are enough) it:

1. builds the local MiniLM-L6 test cross-encoder (untrained head: same cost as
   ms-marco-MiniLM-L-6-v2, scores meaningless) and checks fp16 (and bf16) scores against
   fp32: Spearman rank agreement per query and the largest absolute difference;
2. measures pairs/s for torch fp32 / fp16 / bf16 and, when this onnxruntime has the CUDA
   execution provider, ORT CUDA fp16, at sequence lengths 64/128/256 and several batch
   sizes (synthetic token ids of exactly that length, so the figure is per shape);
3. measures p50/p99 latency of 100-document requests through the windowed engine
   (``engines.Reranker``, token-budget micro-batches);
4. writes every figure to a JSON file.

``--cpu-smoke`` runs every code path at tiny sizes on the CPU (the test suite does this).
"""
from __future__ import annotations

import time

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from engines import EngineConfig, RerankJob, build_reranker
from engines.config import default_cache_dir
from engines.corpus import load_passages, queries
from engines.export import ExportCache
from engines.models import ModelFolder
from engines.onnx_engine import OnnxBackend
from engines.testmodel import ensure_test_model
from engines.torch_engine import CROSS, TorchBackend
from loadgen.bench.machine import machine
from loadgen.bench.report import write_json

SEQ_LENS = (64, 128, 256)
BATCH_SIZES = (64, 256, 1024)
TARGET_PAIRS_PER_S = 20_000


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])


def synthetic_batch(batch: int, seq_len: int, vocab: int, rng: np.random.Generator):
    ids = rng.integers(1000, vocab - 1, size=(batch, seq_len), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = np.ones((batch, seq_len), dtype=np.int64)
    types = np.zeros((batch, seq_len), dtype=np.int64)
    types[:, seq_len // 2:] = 1
    return ids, mask, types


def time_backend(backend, batch, seq_len, vocab, seconds: float, sync) -> float:
    rng = np.random.default_rng(0)
    inputs = synthetic_batch(batch, seq_len, vocab, rng)
    backend.run(*inputs)  # warm-up (kernel selection, allocator)
    sync()
    runs, started = 0, time.perf_counter()
    while True:
        backend.run(*inputs)
        runs += 1
        sync()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and runs >= 3:
            return runs * batch / elapsed


def run(cpu_smoke: bool, json_path: str | None, seconds: float) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not cpu_smoke
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    seq_lens, batch_sizes = ((16,), (2,)) if cpu_smoke else (SEQ_LENS, BATCH_SIZES)
    seconds = 0.05 if cpu_smoke else seconds
    model_path = ensure_test_model()
    folder = ModelFolder.load(str(model_path))
    vocab = int(folder.read_json("config.json")["vocab_size"])
    import onnxruntime as ort

    report: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({machine()['cpu_model']})",
        "cpu_smoke": cpu_smoke, "torch": torch.__version__, "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(), "model": str(model_path),
        "model_note": "MiniLM-L6 cross-encoder, untrained head: same cost as ms-marco-MiniLM-L-6-v2",
        "target_pairs_per_s": TARGET_PAIRS_PER_S, "pairs_per_s": {}, "agreement": {}, "skipped": {},
    }

    # 1. Reduced precision against fp32, on real text pairs.
    passages = load_passages(64 if not cpu_smoke else 8)
    qs = queries(8 if not cpu_smoke else 2)
    precisions = ["fp16", "bf16"] if cuda else ["bf16"]
    fp32 = build_reranker(EngineConfig(engine="torch", model=str(model_path), precision="fp32", device=device))
    jobs = [RerankJob(q, passages) for q in qs]
    reference = [o.scores for o in fp32.rerank(jobs)]
    for precision in precisions:
        try:
            reduced = build_reranker(EngineConfig(engine="torch", model=str(model_path), precision=precision,
                                                  device=device))
            scores = [o.scores for o in reduced.rerank(jobs)]
        except Exception as exc:  # noqa: BLE001 - a missing kernel is a finding, not a crash
            report["skipped"][f"agreement {precision}"] = f"{type(exc).__name__}: {exc}"
            continue
        report["agreement"][precision] = {
            "spearman_min": min(spearman(a, b) for a, b in zip(reference, scores)),
            "spearman_mean": float(np.mean([spearman(a, b) for a, b in zip(reference, scores)])),
            "max_abs_diff": float(max(np.abs(a - b).max() for a, b in zip(reference, scores))),
        }

    # 2. Raw pairs/s per runtime, precision and shape.
    backends = {}
    for precision in (["fp32", "fp16", "bf16"] if cuda else ["fp32", "bf16"]):
        backends[f"torch-{precision}"] = lambda p=precision: TorchBackend(folder, CROSS, device, p, None)
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        backends["ort-cuda-fp16"] = lambda: OnnxBackend(ExportCache(folder, CROSS, default_cache_dir()), None, 0, 0,
                                                        "cuda", "fp16", None)  # no int8: no calibration
    else:
        report["skipped"]["ort-cuda-fp16"] = "this onnxruntime has no CUDAExecutionProvider (needs onnxruntime-gpu)"
    if cpu_smoke:
        backends["ort-cpu-fp32"] = lambda: OnnxBackend(ExportCache(folder, CROSS, default_cache_dir()), None, 0, 0,
                                                       "cpu", "fp32", None)
    for name, make in backends.items():
        try:
            backend = make()
        except Exception as exc:  # noqa: BLE001
            report["skipped"][name] = f"{type(exc).__name__}: {exc}"
            continue
        report["pairs_per_s"][name] = {
            f"seq{s}_batch{b}": time_backend(backend, b, s, vocab, seconds, sync)
            for s in seq_lens for b in batch_sizes
        }
        del backend
        if cuda:
            torch.cuda.empty_cache()

    # 3. Latency of 100-document requests through the windowed engine.
    n_docs, n_requests = (5, 3) if cpu_smoke else (100, 40)
    engine_precision = "fp16" if cuda else "fp32"
    windowed = build_reranker(EngineConfig(engine="torch", model=str(model_path), precision=engine_precision,
                                           device=device, prefilter_threshold=10_000))
    windowed.warmup()
    pool = load_passages(400 if not cpu_smoke else 20)
    rng = np.random.default_rng(1)
    latencies = []
    for i in range(n_requests):
        docs = [pool[int(j)] for j in rng.choice(len(pool), n_docs, replace=False)]
        started = time.perf_counter()
        windowed.rerank([RerankJob(qs[i % len(qs)], docs)])
        sync()
        latencies.append(time.perf_counter() - started)
    report["request_100_docs"] = {"engine": windowed.engine_name, "documents": n_docs, "requests": n_requests,
                                  "p50_ms": float(np.percentile(latencies, 50) * 1000),
                                  "p99_ms": float(np.percentile(latencies, 99) * 1000)}
    best = max((v for per in report["pairs_per_s"].values() for v in per.values()), default=0.0)
    report["best_pairs_per_s"] = best
    report["meets_target"] = best >= TARGET_PAIRS_PER_S
    write_json(json_path, report)
    return report


@click.command()
@click.option("--cpu-smoke", is_flag=True, help="Every code path at tiny sizes on the CPU (for tests).")
@click.option("--json", "json_path", default="out/gpu_bench.json", show_default=True)
@click.option("--seconds", default=2.0, show_default=True, help="Timing per shape.")
def main(cpu_smoke: bool, json_path: str, seconds: float) -> None:
    report = run(cpu_smoke, json_path, seconds)
    console = Console()
    table = Table(title=f"{report['device']}: pairs/s (target {TARGET_PAIRS_PER_S:,})")
    table.add_column("runtime")
    shapes = sorted({k for per in report["pairs_per_s"].values() for k in per})
    for shape in shapes:
        table.add_column(shape, justify="right")
    for name, per in report["pairs_per_s"].items():
        table.add_row(name, *[f"{per.get(s, 0):,.0f}" for s in shapes])
    console.print(table)
    console.print(f"agreement with fp32: {report['agreement']}")
    console.print(f"100-document requests: {report['request_100_docs']}")
    for name, why in report["skipped"].items():
        console.print(f"skipped {name}: {why}")
    console.print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
