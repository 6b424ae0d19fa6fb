"""The peer, run in its own environment: sentence-transformers' CrossEncoder on OpenVINO static int8.

    .venv-peer/bin/python loadgen/bench/peer_st_openvino.py MODEL_DIR WORK_DIR CALIBRATION_JSON

Started by :mod:`loadgen.bench.peer`, which talks to it over stdin/stdout, one JSON object per line.
It runs in ``.venv-peer`` (``loadgen/bench/peer_requirements.txt``), not in the project's
environment: optimum-intel, which sentence-transformers' OpenVINO backend needs, requires
transformers < 5.6 and the project pins 5.17. So it imports nothing of this project.

The recipe is the one sentence-transformers documents for CrossEncoder ("Speeding up inference",
OpenVINO static quantization): load with ``backend="openvino"`` (optimum-intel exports the model),
``export_static_quantized_openvino_model`` with the default ``OVQuantizationConfig()``, reload from
``openvino/openvino_model_qint8_quantized.xml``. The one departure: its default calibration set
(GLUE SST-2) is on the Hugging Face Hub, which this machine cannot reach, so the same number of
texts (300, one per row, column ``sentence``, as SST-2 gives them) comes from our corpus through a
local dataset folder with SST-2's config and split names.

Requests on stdin (answers on stdout):

* ``{"cmd": "versions"}`` → the peer's package versions.
* ``{"cmd": "measure", "requests": [[query, [doc, ...]], ...], "per_request": bool}`` →
  ``{"pairs_per_s": ..., "scores": [...]}``: ``CrossEncoder.predict`` per request (as a server
  scores each request it gets) or on every pair at once, ``batch_size=32``; scores in pair order.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from optimum.intel import OVQuantizationConfig  # noqa: E402 - after the offline switches
from sentence_transformers import CrossEncoder  # noqa: E402
from sentence_transformers.backend import export_static_quantized_openvino_model  # noqa: E402

QUANTIZED_FILE = "openvino/openvino_model_qint8_quantized.xml"
DATASET_CARD = """---
configs:
- config_name: sst2
  data_files:
  - split: train
    path: train.jsonl
---
Calibration texts for the peer benchmark (our corpus, in GLUE SST-2's layout).
"""


def calibration_dataset(texts: list[str], folder: Path) -> Path:
    """A local dataset that ``datasets.load_dataset(folder, "sst2", split="train")`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(DATASET_CARD, encoding="utf-8")
    with open(folder / "train.jsonl", "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"sentence": text}) + "\n")
    return folder


def build(model_dir: Path, work_dir: Path, texts: list[str]) -> tuple[CrossEncoder, float]:
    """The model as sentence-transformers' docs quantize it, in a copy under ``work_dir``."""
    started = time.perf_counter()
    target = work_dir / "model"
    if not (target / QUANTIZED_FILE).exists():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(model_dir, target)
        fp32 = CrossEncoder(str(target), backend="openvino", device="cpu")
        export_static_quantized_openvino_model(
            fp32, OVQuantizationConfig(), str(target),
            dataset_name=str(calibration_dataset(texts, work_dir / "calibration")),
            dataset_config_name="sst2", dataset_split="train", column_name="sentence")
    model = CrossEncoder(str(target), backend="openvino", device="cpu",
                         model_kwargs={"file_name": QUANTIZED_FILE})
    model.predict([("warm up", "the model")], show_progress_bar=False)
    return model, time.perf_counter() - started


def measure(model: CrossEncoder, requests: list, per_request: bool) -> dict:
    started = time.perf_counter()
    if per_request:
        scores = [float(s) for query, docs in requests
                  for s in model.predict([(query, d) for d in docs], batch_size=32, show_progress_bar=False)]
    else:
        pairs = [(query, d) for query, docs in requests for d in docs]
        scores = [float(s) for s in model.predict(pairs, batch_size=32, show_progress_bar=False)]
    return {"pairs_per_s": len(scores) / (time.perf_counter() - started), "scores": scores}


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in
            ("sentence-transformers", "transformers", "optimum", "optimum-intel", "openvino", "nncf", "torch")}


def main(argv: list[str]) -> int:
    # The pipe to the driver gets our answers only: libraries print progress to stdout (Python's
    # and C's), so file descriptor 1 becomes stderr and the answers keep a copy of the old one.
    answers = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    model_dir, work_dir, calibration = Path(argv[0]), Path(argv[1]), Path(argv[2])
    texts = json.loads(calibration.read_text(encoding="utf-8"))
    model, build_s = build(model_dir, work_dir, texts)
    print(json.dumps({"ready": True, "build_s": build_s}), file=answers, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "versions":
            answer = versions()
        elif request["cmd"] == "measure":
            answer = measure(model, request["requests"], bool(request["per_request"]))
        else:
            answer = {"error": f"unknown command {request['cmd']!r}"}
        print(json.dumps(answer), file=answers, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
