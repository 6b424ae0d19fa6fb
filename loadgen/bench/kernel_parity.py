"""Our OpenVINO int8 model beside the peer's, one inference at a time: where the engine's lead comes from.

    python -m loadgen.bench.kernel_parity --json out/kernel-parity.json [--peer-model PATH.xml]

``make bench-peer`` compares whole engines; this times the compiled models alone, on the same
random token ids, at the micro-batch shapes our engine runs (1,024 tokens or so, widths that are
and are not multiples of 16), best of 20 after 4 warm-up runs, each model compiled with the
execution precision we set (f32 for what int8 does not cover) and with bf16 (the CPU plugin's
default where the CPU has AVX-512 BF16, which the peer leaves on; timed only on such CPUs). The
peer's model is the one ``make bench-peer`` quantized (sentence-transformers'
``export_static_quantized_openvino_model``), found in the cache unless given.

If the two models take the same time per token, the engine's lead over the peer is all in what
it feeds them, and no more can come from the compiled model without a faster kernel. What the
peer feeds its model is reported too: ``make bench``'s rounds as its batched ``predict`` cuts
them (sentence-transformers 6 sorts a call's pairs by their length in characters, then takes
batches of 32, each padded to its longest pair in tokens), and the share of its tokens that is
padding; the engine's own is ``make bench``'s padding column.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click
import numpy as np

from engines.config import cpu_flags, default_cache_dir
from engines.corpus import load_passages
from engines.export import ExportCache
from engines.models import ModelFolder, effective_max_length, load_fast_tokenizer
from engines.openvino_engine import compile_config, openvino_int8
from engines.testmodel import ensure_test_model
from engines.torch_engine import CROSS
from loadgen.bench.engine_speed import make_rounds
from loadgen.bench.machine import machine
from loadgen.bench.report import command, table, write_json

#: (pairs, width): micro-batches of ~1,024 tokens, as the engine plans them on CPU.
SHAPES = [(16, 64), (12, 72), (12, 80), (8, 88), (8, 96), (8, 104), (8, 112), (8, 128), (4, 256)]


def precisions() -> tuple[str, ...]:
    """f32, and bf16 where the CPU runs it natively (AVX-512 BF16 or AMX)."""
    flags = cpu_flags() or frozenset()
    return ("f32", "bf16") if {"avx512_bf16", "amx_bf16"} & flags else ("f32",)


def peer_model_in_cache() -> Path | None:
    found = sorted((default_cache_dir() / "peer-st-openvino").glob("*/model/openvino/openvino_model_qint8_quantized.xml"),
                   key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def time_shapes(path: Path, precision: str, threads: int | None = None) -> dict[str, float]:
    """Best-of-20 milliseconds per shape of the model at ``path``."""
    import openvino as ov

    core = ov.Core()
    config = {**compile_config("int8", threads, cpu_pinning=False), "INFERENCE_PRECISION_HINT": precision}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    names = {port.get_any_name() for port in compiled.inputs}
    rng = np.random.default_rng(0)
    out = {}
    for pairs, width in SHAPES:
        feeds = {"input_ids": rng.integers(1000, 20000, (pairs, width), dtype=np.int64),
                 "attention_mask": np.ones((pairs, width), np.int64),
                 "token_type_ids": np.zeros((pairs, width), np.int64)}
        feeds = {name: value for name, value in feeds.items() if name in names}
        for _ in range(4):
            request.infer(feeds)
        best = float("inf")
        for _ in range(20):
            started = time.perf_counter()
            request.infer(feeds)
            best = min(best, time.perf_counter() - started)
        out[f"{pairs}x{width}"] = 1000 * best
    return out


#: The peer's batched ``predict`` in ``make bench-peer`` (``batch_size=32``).
PEER_BATCH_SIZE = 32


def peer_padding(tokenizer, max_length: int, rounds: list) -> float:
    """The share of the tokens the peer's batched ``predict`` runs that is padding, over ``rounds``
    of (query, documents) requests: each round's pairs sorted by characters, longest first (as
    sentence-transformers 6's ``CrossEncoder.predict`` sorts them), in batches of
    :data:`PEER_BATCH_SIZE`, each padded to its longest pair in tokens."""
    real = padded = 0
    for requests in rounds:
        pairs = [(query, document) for query, documents in requests for document in documents]
        lengths = np.minimum([len(encoding.ids) for encoding in tokenizer.encode_batch(pairs)], max_length)
        order = np.argsort([-(len(query) + len(document)) for query, document in pairs], kind="stable")
        for start in range(0, len(order), PEER_BATCH_SIZE):
            batch = lengths[order[start:start + PEER_BATCH_SIZE]]
            real += int(batch.sum())
            padded += int(batch.max()) * len(batch)
    return 1 - real / padded


def run(peer_model: Path | None) -> dict:
    folder = ModelFolder.load(str(ensure_test_model()))
    tokenizer, tokenizer_max, pad_id = load_fast_tokenizer(folder)
    length = effective_max_length(folder, tokenizer_max, None)  # as the engine's: its cached IR
    ours = openvino_int8(ExportCache(folder, CROSS, default_cache_dir()), tokenizer, length, pad_id)
    models = {"ours": ours}
    peer_model = peer_model or peer_model_in_cache()
    if peer_model is not None:
        models["peer"] = peer_model
    report = {"command": command("loadgen.bench.kernel_parity"), "machine": machine(), "shapes": [f"{p}x{w}" for p, w in SHAPES],
              "models": {name: str(path) for name, path in models.items()}, "ms": {},
              "peer_batched_padding": peer_padding(tokenizer, length, make_rounds(False, load_passages())[0])}
    for precision in precisions():  # interleaved, so both models share the machine's state
        for name, path in models.items():
            report["ms"][f"{name} {precision}"] = time_shapes(path, precision)
    return report


def markdown(report: dict) -> str:
    rows = []
    for shape in report["shapes"]:
        pairs, width = (int(x) for x in shape.split("x"))
        cells = [shape]
        for key, times in report["ms"].items():
            cells.append(f"{times[shape]:.2f} ms ({1000 * times[shape] / (pairs * width):.1f} µs/token)")
        rows.append(cells)
    return "\n".join(table(["micro-batch (pairs x width)", *report["ms"]], rows, align="l" + "r" * len(report["ms"])))


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__.split("\n\n")[0])
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the results here")
@click.option("--peer-model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the peer's int8 IR (default: the one make bench-peer left in the cache)")
def main(json_path: Path | None, peer_model: Path | None) -> None:
    logging.basicConfig(level=logging.WARNING)
    report = run(peer_model)
    write_json(json_path, report)
    if "peer" not in report["models"]:
        click.echo("no peer model in the cache (make bench-peer quantizes it): ours alone")
    click.echo(markdown(report))
    click.echo(f"the peer's batched predict on make bench's rounds: {report['peer_batched_padding']:.1%} of its tokens "
               "are padding (make bench's padding column: ours)")


if __name__ == "__main__":
    main()
