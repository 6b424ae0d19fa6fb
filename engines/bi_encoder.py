"""Bi-encoder: sentence-transformers embeddings compared by cosine similarity.

The engine of its own (``engine="bi-encoder"``) and the first stage of the hybrid reranker, which
cross-encodes only the documents a bi-encoder ranks highest. Embeddings use the model's own
pooling (mean or CLS, from its ``1_Pooling`` config) and are L2-normalised, so a dot product is the
cosine; they match ``SentenceTransformer.encode(..., normalize_embeddings=True)``.

A document's embedding does not depend on the query, which is what makes a bi-encoder cheap when
documents come back: an LRU cache keyed by a hash of the text skips re-encoding them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from engines.batching import BatchRunner, TokenCache


def _key(text: str) -> bytes:
    # A digest rather than the text: 100 KB documents should not sit in the cache as keys.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class BiEncoder:
    """Embeds texts through a :class:`~engines.batching.BatchRunner` running an embedding model.

    Args:
        runner: batch runner whose backend returns normalised sentence embeddings.
        cache_size: how many embeddings to keep (least recently used go first); 0 disables.
    """

    def __init__(self, runner: BatchRunner, cache_size: int):
        self.runner = runner
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def embed(self, texts: Sequence[str], tokens: TokenCache | None = None) -> np.ndarray:
        """``(len(texts), dim)`` float32 unit vectors; each distinct uncached text is encoded once
        (its token ids taken from ``tokens`` when the tokenizers agree)."""
        keys = [_key(t) for t in texts]
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            for key in keys:
                if key not in found and key in self._cache:
                    self._cache.move_to_end(key)
                    found[key] = self._cache[key]
        todo: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key not in found and key not in todo:
                todo[key] = text
        self.hits += len(keys) - sum(1 for k in keys if k in todo)
        self.misses += sum(1 for k in keys if k in todo)
        if todo:
            vectors = self.runner.embed_texts(list(todo.values()), tokens)
            fresh = dict(zip(todo.keys(), vectors))
            found.update(fresh)
            if self.cache_size:
                with self._lock:
                    for key, vector in fresh.items():
                        self._cache[key] = vector
                        self._cache.move_to_end(key)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def cosine(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``query`` with each document (float32)."""
        vectors = self.embed([query, *documents])
        return (vectors[1:] @ vectors[0]).astype(np.float32)
