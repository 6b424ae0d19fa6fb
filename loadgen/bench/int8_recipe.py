"""``python -m loadgen.bench.int8_recipe``: what keeping a family's MatMuls fp32 costs OpenVINO int8.

OpenVINO int8 leaves some MatMuls of DeBERTa-v2, XLM-RoBERTa and ELECTRA in fp32
(:data:`engines.openvino_engine.FAMILY_FP32_MATMULS`: with them int8 those families' edge
documents lost their ranking). This builds each named stand-in's int8 model twice in fresh caches,
as shipped and with those MatMuls quantized too (the fidelity check skipped for that variant only,
since it is what the check refuses), and times both on the same windows, round by round side by
side. A measurement of the recipe, not a way to serve the all-int8 model.

    python -m loadgen.bench.int8_recipe electra bge-reranker-base --json out/int8_recipe.json
"""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import click

import engines.openvino_engine as openvino_engine
from engines import EngineConfig, RerankJob, build_reranker
from engines.corpus import load_passages, queries
from engines.standins import ensure_standin
from loadgen.bench.report import write_json

SHIPPED = "shipped (family MatMuls fp32)"
ALL_INT8 = "family MatMuls int8 too"
SHIPPED_TABLE = dict(openvino_engine.FAMILY_FP32_MATMULS)


def _build(folder: str, family_fp32: dict, scratch: str):
    openvino_engine.FAMILY_FP32_MATMULS = family_fp32  # read once, when the int8 model is made
    try:
        cache = tempfile.mkdtemp(prefix="cache-", dir=scratch)  # fresh: nothing cached to reuse
        return build_reranker(EngineConfig(engine="openvino", precision="int8", model=folder, device="cpu",
                                           cache_dir=cache), verify=False)
    finally:
        openvino_engine.FAMILY_FP32_MATMULS = SHIPPED_TABLE


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("standins", nargs=-1, required=True)
@click.option("--size", type=click.Choice(["tiny", "base"]), default="base", show_default=True)
@click.option("--rounds", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--requests", default=40, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(standins, size, rounds, requests, json_path):
    """Pairs/s of each stand-in's OpenVINO int8 model as shipped against all-int8."""
    rng = random.Random(5)
    passages = load_passages()
    jobs = [RerankJob(query, rng.sample(passages, 12), prefilter=False) for query in queries(requests, seed=11)]
    report = {}
    # The two int8 models per stand-in (hundreds of MiB at base size) go when the run ends.
    with tempfile.TemporaryDirectory(prefix="int8-recipe-") as scratch:
        for name in standins:
            report[name] = _measure(name, size, rounds, jobs, scratch)
    write_json(json_path, report)


def side_by_side(built: dict, jobs: list, rounds: int) -> dict[str, list[float]]:
    """Pairs/s of each warmed-up reranker of ``built`` on ``jobs``, per round; in each round every
    reranker runs in turn, so a busy moment of a shared machine slows one round of each."""
    pairs = sum(len(job.documents) for job in jobs)
    for reranker in built.values():
        reranker.warmup()
        reranker.rerank(jobs[:5])
    timed = {variant: [] for variant in built}
    for _ in range(rounds):
        for variant, reranker in built.items():
            began = time.perf_counter()
            reranker.rerank(jobs)
            timed[variant].append(pairs / (time.perf_counter() - began))
    return timed


def _measure(name: str, size: str, rounds: int, jobs: list, scratch: str) -> dict:
    """One stand-in's two int8 models, timed round by round side by side."""
    folder = str(ensure_standin(name, size=size))
    built = {SHIPPED: _build(folder, SHIPPED_TABLE, scratch), ALL_INT8: _build(folder, {}, scratch)}
    timed = side_by_side(built, jobs, rounds)
    result = {variant: {"best_pairs_per_s": max(r), "rounds_pairs_per_s": r} for variant, r in timed.items()}
    ratio = max(timed[SHIPPED]) / max(timed[ALL_INT8])
    result["shipped_over_all_int8"] = ratio
    click.echo(f"{name} ({size}): shipped {max(timed[SHIPPED]):.1f} pairs/s, all-int8 {max(timed[ALL_INT8]):.1f}"
               f" -> {ratio:.2f}x")
    return result


if __name__ == "__main__":
    main()
