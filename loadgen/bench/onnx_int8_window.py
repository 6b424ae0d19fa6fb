"""``python -m loadgen.bench.onnx_int8_window``: ONNX Runtime int8, static against the dynamic recipe
it replaced (#25): pairs/s, and how far a request's scores move with what shares its window.

The dynamic recipe (``quantize_dynamic``: per-channel int8 weights, activations quantized per batch
at run time, the feed-forward down projections fp32) is rebuilt here, in a fresh cache, only to be
measured; the engine serves the static one (:func:`engines.export.onnx_int8_static`). Both run the
same windows through the engine's own batching, round by round side by side, with fp32 beside them
as the yardstick of a shared machine's load.

    python -m loadgen.bench.onnx_int8_window --json out/onnx_int8_window.json
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import click
import numpy as np

import engines.onnx_engine as onnx_engine
from engines import EngineConfig, RerankJob, build_reranker
from engines.corpus import load_passages, queries
from engines.export import feed_forward_matmuls, onnx_fp32
from engines.testmodel import ensure_test_model
from loadgen.bench.int8_recipe import side_by_side
from loadgen.bench.machine import machine
from loadgen.bench.report import write_json


def _dynamic_int8(cache, calibration, key) -> Path:
    """The replaced recipe, made in ``cache`` as before #25 (the calibration is not used)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = onnx_fp32(cache)

    def make(out: Path) -> None:
        model = onnx.load(str(source), load_external_data=False)
        down = [name for name in feed_forward_matmuls(model) if name.endswith("output/dense/MatMul")]
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=down,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

    return cache.get_or_make("model.int8-dynamic.onnx", make, "quantized (dynamic int8, for this measurement)")


def _build(model: str, precision: str, scratch: str, dynamic: bool = False):
    shipped = onnx_engine.onnx_int8_static
    onnx_engine.onnx_int8_static = _dynamic_int8 if dynamic else shipped  # read when the backend is made
    try:
        cache = tempfile.mkdtemp(prefix="cache-", dir=scratch)  # fresh: nothing cached to reuse
        return build_reranker(EngineConfig(engine="onnx", precision=precision, model=model, device="cpu",
                                           cache_dir=cache), verify=False)
    finally:
        onnx_engine.onnx_int8_static = shipped


def window_movement(reranker, jobs: list) -> float:
    """Largest |score alone - score in the window of every job| over ``jobs``."""
    together = reranker.rerank(jobs)
    return max(float(np.max(np.abs(reranker.rerank([job])[0].scores - outcome.scores)))
               for job, outcome in zip(jobs, together))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--requests", default=40, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(rounds, requests, json_path):
    """Pairs/s and window movement of ONNX int8, static and dynamic, on the test model."""
    rng = random.Random(5)
    passages = load_passages()
    jobs = [RerankJob(query, rng.sample(passages, rng.randint(4, 15)), prefilter=False)
            for query in queries(requests, seed=11)]
    model = str(ensure_test_model())
    with tempfile.TemporaryDirectory(prefix="onnx-int8-window-") as scratch:
        built = {"static int8": _build(model, "int8", scratch), "dynamic int8": _build(model, "int8", scratch, True),
                 "fp32": _build(model, "fp32", scratch)}
        timed = side_by_side(built, jobs, rounds)
        moved = {variant: window_movement(reranker, jobs) for variant, reranker in built.items()}
    report = {"machine": machine(), "pairs_per_round": sum(len(job.documents) for job in jobs), "variants": {}}
    for variant, runs in timed.items():
        report["variants"][variant] = {"best_pairs_per_s": max(runs), "rounds_pairs_per_s": runs,
                                       "vs_dynamic": max(runs) / max(timed["dynamic int8"]),
                                       "max_window_movement": moved[variant]}
        click.echo(f"{variant:>12}: {max(runs):6.1f} pairs/s (best of {rounds}), {max(runs) / max(timed['dynamic int8']):.2f}x"
                   f" dynamic; a score moves with its window by up to {moved[variant]:.2g}")
    write_json(json_path, report)


if __name__ == "__main__":
    main()
