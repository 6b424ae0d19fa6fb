"""Against the peer: our default engine beside sentence-transformers on OpenVINO static int8.

    make bench-peer     # builds .venv-peer once, then:
    python -m loadgen.bench.peer --json out/peer.json [--peer-python .venv-peer/bin/python] [--quick]

The peer is what a team would otherwise deploy on CPU: sentence-transformers' ``CrossEncoder``
with its OpenVINO backend, statically quantized to int8 as its documentation shows
(:mod:`loadgen.bench.peer_st_openvino`, which runs in its own environment because optimum-intel
needs an older transformers than the project pins). Beside it, in this process: our default engine
through ``Reranker.rerank`` (windows of up to 512 pairs, as the worker groups them; ``auto``
precision resolves as the worker's does: int8 on CPUs with VNNI or AMX, fp32 elsewhere), our two
int8 engines, and the naive baseline, ``CrossEncoder.predict`` in fp32 PyTorch.

Same requests for everyone (4-15 corpus documents each, the engine benchmark's workload, the
untrained-head MiniLM-L6 test cross-encoder), in rounds: each round runs every contender in turn,
one process at a time (the other waits on a pipe), and a contender's figure is its best round.
The peer is timed both per request (``predict`` on each request alone, as a server calls it) and on
every pair of the round at once (its best case: batches of 32 across requests).

Fidelity: every int8 contender's scores on the first round's pairs against the fp32 PyTorch
forward pass (Pearson and Spearman; the test model's untrained head puts scores close together,
which makes rank agreement a harsh test).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from pathlib import Path

import click
import numpy as np
from scipy.stats import pearsonr, spearmanr

from engines import RerankJob
from engines.config import default_cache_dir
from engines.corpus import load_passages
from engines.models import model_fingerprint
from engines.testmodel import ensure_test_model
from loadgen.bench.engine_speed import (DEFAULT_ENGINE, EngineContender, NaiveContender, engine_name, make_rounds,
                                        measure_rounds)
from loadgen.bench.machine import machine
from loadgen.bench.report import command, table, write_json

REPO = Path(__file__).resolve().parents[2]
PEER_SCRIPT = Path(__file__).with_name("peer_st_openvino.py")
DEFAULT_PEER_PYTHON = REPO / ".venv-peer" / "bin" / "python"
CALIBRATION_TEXTS = 300  # OVQuantizationConfig's default num_samples
OUR_ENGINES = [DEFAULT_ENGINE, ("openvino", "int8"), ("onnx", "int8")]


class PeerContender:
    """The peer's process, fed rounds over a pipe; ``per_request`` picks how it calls ``predict``."""

    def __init__(self, process: subprocess.Popen, per_request: bool):
        self.process = process
        self.per_request = per_request
        self.last_scores: list[float] = []

    @staticmethod
    def start(peer_python: Path, model_path: str, passages: list[str]) -> tuple[subprocess.Popen, float]:
        work_dir = default_cache_dir() / "peer-st-openvino" / model_key(Path(model_path), passages[:CALIBRATION_TEXTS])
        work_dir.mkdir(parents=True, exist_ok=True)
        calibration = work_dir / "calibration.json"
        calibration.write_text(json.dumps(passages[:CALIBRATION_TEXTS]), encoding="utf-8")
        process = subprocess.Popen([str(peer_python), str(PEER_SCRIPT), model_path, str(work_dir), str(calibration)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = _read_answer(process)
        return process, ready["build_s"]

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return _read_answer(self.process)

    def measure(self, requests) -> dict:
        answer = self.ask({"cmd": "measure", "requests": requests, "per_request": self.per_request})
        self.last_scores = answer["scores"]
        return {"pairs_per_s": answer["pairs_per_s"]}


def model_key(model_dir: Path, calibration: list[str]) -> str:
    """Names the peer's quantized copy after the model's files and the calibration texts, so that a
    rebuilt model or another corpus is quantized again rather than served from a stale copy."""
    return hashlib.sha256(f"{model_fingerprint(model_dir)}|{json.dumps(calibration)}".encode()).hexdigest()[:16]


def _read_answer(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the peer process ended (exit {process.wait()}); its error is above")
    answer = json.loads(line)
    if "error" in answer:
        raise RuntimeError(answer["error"])
    return answer


def agreement(scores, reference) -> dict:
    scores, reference = np.asarray(scores, dtype=float), np.asarray(reference, dtype=float)
    return {"pearson": float(pearsonr(scores, reference)[0]), "spearman": float(spearmanr(scores, reference)[0]),
            "max_abs_diff": float(np.max(np.abs(scores - reference)))}


def run(peer_python: Path, quick: bool) -> dict:
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    machine_at_start = machine()  # its load average is the quiet machine's, not this run's
    model_path = str(ensure_test_model())
    passages = load_passages()
    rounds, warm = make_rounds(quick, passages)

    process, peer_build_s = PeerContender.start(peer_python, model_path, passages)
    try:
        peer_batched, peer_per_request = PeerContender(process, per_request=False), PeerContender(process, per_request=True)
        peer_versions = peer_batched.ask({"cmd": "versions"})
        peer_per_request.measure(warm)  # first sight of typical shapes, as our engine gets below
        naive = NaiveContender(model_path, per_request=False)
        ours: dict[str, EngineContender] = {}
        for engine, precision in OUR_ENGINES:  # "auto" resolves to one of the others, or fp32
            if engine_name(engine, precision) not in ours:
                contender = EngineContender(engine, precision, model_path, warm)
                ours[contender.name] = contender
        default_name = next(iter(ours))
        contenders = {"naive_batched": naive, "peer_per_request": peer_per_request,
                      "peer_batched": peer_batched, **ours}
        best = measure_rounds(contenders, rounds)

        # Fidelity on the first round's pairs, outside the timing.
        first = rounds[0]
        reference = naive.model.predict([(q, d) for q, docs in first for d in docs], batch_size=32, show_progress_bar=False)
        fidelity = {}
        for name, contender in ours.items():
            outcomes = contender.reranker.rerank([RerankJob(q, docs, prefilter=False) for q, docs in first])
            fidelity[name] = agreement(np.concatenate([outcome.scores for outcome in outcomes]), reference)
        peer_batched.measure(first)
        fidelity["peer"] = agreement(peer_batched.last_scores, reference)
    finally:
        process.stdin.close()
        process.wait(timeout=60)

    naive_b = best["naive_batched"]["pairs_per_s"]
    fastest = max(ours, key=lambda name: best[name]["pairs_per_s"])
    ours_pps = best[fastest]["pairs_per_s"]
    return {
        "command": command("loadgen.bench.peer"),
        "machine": {**machine_at_start, "load_average_at_end": list(os.getloadavg())},
        "model": "test-cross-encoder-minilm-l6: MiniLM-L6-H384 with an UNTRAINED head (same cost as "
                 "cross-encoder/ms-marco-MiniLM-L-6-v2; scores are not relevance)",
        "workload": {"rounds": len(rounds), "requests_per_round": len(rounds[0]), "documents_per_request": "4-15",
                     "pairs_per_round": [sum(len(d) for _, d in r) for r in rounds]},
        "peer": {"recipe": "CrossEncoder(backend='openvino') + export_static_quantized_openvino_model("
                           "OVQuantizationConfig()), calibrated on 300 corpus texts (SST-2 is on the hub)",
                 "versions": peer_versions, "build_s": peer_build_s},
        "ours": {"default": default_name, "fastest": fastest,
                 "build_s": {name: contender.build_s for name, contender in ours.items()}},
        "pairs_per_s": {name: row["pairs_per_s"] for name, row in best.items()},
        "rounds_pairs_per_s": {name: row["rounds_pairs_per_s"] for name, row in best.items()},
        "ratios": {  # ours = our fastest engine on this machine
            "ours_vs_peer_per_request": ours_pps / best["peer_per_request"]["pairs_per_s"],
            "ours_vs_peer_batched": ours_pps / best["peer_batched"]["pairs_per_s"],
            "ours_vs_naive_batched": ours_pps / naive_b,
            "peer_batched_vs_naive_batched": best["peer_batched"]["pairs_per_s"] / naive_b,
            # what #24 asks of the default engine (the fastest may be another on this CPU)
            "default_vs_peer_per_request": best[default_name]["pairs_per_s"] / best["peer_per_request"]["pairs_per_s"],
            "default_vs_peer_batched": best[default_name]["pairs_per_s"] / best["peer_batched"]["pairs_per_s"],
        },
        "fidelity_vs_torch_fp32": fidelity,
        "elapsed_s": time.perf_counter() - started,
    }


def markdown(report: dict) -> str:
    pps, rounds, fid = report["pairs_per_s"], report["rounds_pairs_per_s"], report["fidelity_vs_torch_fp32"]
    default, fastest = report["ours"]["default"], report["ours"]["fastest"]
    naive_b = pps["naive_batched"]
    rows = [
        ("naive `CrossEncoder.predict` (torch fp32), all pairs, batch_size=32", "naive_batched", None),
        ("peer: sentence-transformers OpenVINO static int8, each request alone", "peer_per_request", "peer"),
        ("peer: sentence-transformers OpenVINO static int8, all pairs, batch_size=32", "peer_batched", "peer"),
    ]
    for name in report["ours"]["build_s"]:
        role = "the default here" if name == default else ""
        label = f"ours: {name}" + (f" ({role})" if role else "")
        rows.append((f"**{label}**" if name == fastest else label, name, name))
    cells = [(label, f"{pps[key]:.1f} ({' / '.join(f'{x:.0f}' for x in rounds[key])})", f"{pps[key] / naive_b:.2f}x",
              f"{pps[fastest] / pps[key]:.2f}x",
              f"{fid[fid_key]['pearson']:.4f} / {fid[fid_key]['spearman']:.4f}" if fid_key else "(reference)")
             for label, key, fid_key in rows]
    return "\n".join(table(["contender", "pairs/s (rounds)", "vs naive batched", f"{fastest} ÷ it",
                             "Pearson / Spearman vs torch fp32"], cells, align="lrrrr"))


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the results here")
@click.option("--peer-python", type=click.Path(path_type=Path), default=DEFAULT_PEER_PYTHON, show_default=True,
              help="the Python of the peer's environment (make bench-peer builds .venv-peer)")
@click.option("--quick", is_flag=True, help="2 rounds of 20 requests")
def main(json_path: Path | None, peer_python: Path, quick: bool) -> None:
    if not peer_python.exists():
        raise click.UsageError(f"{peer_python} does not exist: `make bench-peer` builds the peer's environment "
                               "(.venv-peer, from loadgen/bench/peer_requirements.txt)")
    report = run(peer_python, quick)
    write_json(json_path, report)
    m = report["machine"]
    click.echo(f"{m['cpu_model']} x{m['cpus']}, load {m['load_average_at_start'][0]:.2f} at start; "
               f"peer {report['peer']['versions']}")
    click.echo(markdown(report))
    r = report["ratios"]
    click.echo(f"our default engine ({report['ours']['default']}) vs the peer: {r['default_vs_peer_per_request']:.2f}x "
               f"per request, {r['default_vs_peer_batched']:.2f}x batched")


if __name__ == "__main__":
    main()
