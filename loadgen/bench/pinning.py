"""``python -m loadgen.bench.pinning``: what the unpinned default costs a worker that owns its cores.

Workers neither pin their inference threads to cores nor let them spin-wait, unless
``RERANK_CPU_PINNING`` says so (#18: replicas on one host would otherwise fight over the same
cores). This measures the other side of that choice, in one process with nothing beside it:

- throughput: the bench's requests (4-15 documents each, windows of up to 512 pairs) through each
  engine with pinning off and on, round by round side by side; best and median round;
- lone windows: one 10-document request at a time, the engine's own time per window, for each
  thread count and pinning setting; p50 and p90.

    python -m loadgen.bench.pinning --json out/pinning.json
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import click
from rich.console import Console

from engines import EngineConfig, RerankJob, build_reranker
from engines.corpus import load_passages, queries
from engines.testmodel import ensure_test_model
from loadgen.bench.engine_speed import EngineContender, make_requests, measure_rounds
from loadgen.bench.machine import machine
from loadgen.bench.report import table, write_json

LONE_DOCUMENTS = 10


def _parse_engines(text: str) -> list[tuple[str, str]]:
    """``openvino:int8,onnx:int8`` -> [(engine, precision), ...]."""
    out = []
    for item in text.split(","):
        engine, _, precision = item.strip().partition(":")
        out.append((engine, precision or "auto"))
    return out


def throughput(engines: list[tuple[str, str]], model: str, rounds: int, requests: int, threads: int | None) -> dict:
    passages = load_passages()
    batches = [make_requests(requests, seed=7 + r, passages=passages) for r in range(rounds)]
    warm = make_requests(requests // 2 or 1, seed=100, passages=passages)
    contenders = {}
    for engine, precision in engines:
        for pinning in (False, True):
            contender = EngineContender(engine, precision, model, warm, cpu_pinning=pinning, threads=threads)
            contenders[(contender.name, pinning)] = contender
    by_name = {f"{name}|{pinning}": c for (name, pinning), c in contenders.items()}
    best = measure_rounds(by_name, batches)
    return {key: {"engine": key.split("|")[0], "cpu_pinning": key.endswith("True"),
                  "best_pairs_per_s": result["pairs_per_s"], "rounds_pairs_per_s": result["rounds_pairs_per_s"],
                  "median_pairs_per_s": statistics.median(result["rounds_pairs_per_s"])}
            for key, result in best.items()}


def lone_windows(engines: list[tuple[str, str]], model: str, threads_list: list[int], requests: int) -> list[dict]:
    passages = load_passages()
    asked = queries(requests + 10, seed=3)
    out = []
    for engine, precision in engines:
        for threads in threads_list:
            for pinning in (False, True):
                reranker = build_reranker(EngineConfig(engine=engine, model=model, precision=precision, device="cpu",
                                                       threads=threads, cpu_pinning=pinning))
                reranker.warmup()
                for query in asked[:10]:  # first sight of the shapes, not measured
                    reranker.rerank([RerankJob(query, passages[:LONE_DOCUMENTS], prefilter=False)])
                times = []
                for i, query in enumerate(asked[10:]):
                    start = LONE_DOCUMENTS * i % (len(passages) - LONE_DOCUMENTS)
                    job = RerankJob(query, passages[start:start + LONE_DOCUMENTS], prefilter=False)
                    began = time.perf_counter()
                    reranker.rerank([job])
                    times.append(time.perf_counter() - began)
                times.sort()
                out.append({"engine": reranker.engine_name, "threads": threads, "cpu_pinning": pinning,
                            "p50_ms": 1000 * statistics.median(times),
                            "p90_ms": 1000 * times[int(0.9 * (len(times) - 1))]})
    return out


def markdown(report: dict) -> str:
    def pinned(row: dict) -> str:
        return "on" if row["cpu_pinning"] else "off"

    throughput = [(row["engine"], pinned(row), f"{row['best_pairs_per_s']:.1f}", f"{row['median_pairs_per_s']:.1f}")
                  for row in report["throughput"].values()]
    lone = [(row["engine"], row["threads"], pinned(row), f"{row['p50_ms']:.1f} ms", f"{row['p90_ms']:.1f} ms")
            for row in report["lone_windows"]]
    return "\n".join([*table(["engine", "pinning / spin-waiting", "pairs/s, best round", "median round"], throughput,
                              align="llrr"), "",
                       *table(["engine", "threads", "pinning / spin-waiting",
                               f"lone {LONE_DOCUMENTS}-document window p50", "p90"], lone, align="lrlrr")])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engines", "engines_text", default="openvino:int8,onnx:int8", show_default=True,
              help="engine:precision pairs, comma-separated.")
@click.option("--model", default=None, help="A cross-encoder folder [default: the local test model].")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(min=1),
              help="Inference threads for the throughput rounds.")
@click.option("--lone-threads", default="1,2", show_default=True, help="Thread counts for the lone windows.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--requests", default=80, show_default=True, type=click.IntRange(min=2), help="Requests per round.")
@click.option("--lone-requests", default=50, show_default=True, type=click.IntRange(min=2))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(engines_text, model, threads, lone_threads, rounds, requests, lone_requests, json_path):
    """One process, pinning and spin-waiting off (the default) against on: throughput and lone windows."""
    console = Console()
    engines = _parse_engines(engines_text)
    model = model or str(ensure_test_model())
    started = time.perf_counter()
    report = {"machine": machine(), "model": model, "threads": threads, "rounds": rounds,
              "requests_per_round": requests,
              "throughput": throughput(engines, model, rounds, requests, threads),
              "lone_windows": lone_windows(engines, model, [int(t) for t in lone_threads.split(",")], lone_requests)}
    report["elapsed_s"] = time.perf_counter() - started
    console.print(markdown(report), markup=False, highlight=False, soft_wrap=True)  # table rows stay whole
    if write_json(json_path, report):
        console.print(f"wrote {json_path} in {report['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
