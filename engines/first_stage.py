"""First stages of the hybrid reranker: cheap scores that decide which documents the
cross-encoder reads.

One small interface, :class:`FirstStage`: a window's jobs (query, documents, the caller's own
scores) and the window's :class:`~engines.batching.TokenCache` in, one float array per job out,
higher = more relevant. The methods (``EngineConfig.prefilter_method`` is the default, a
request may choose another):

==============  =================================================================================
``bi-encoder``  cosine of all-MiniLM-L6-v2 embeddings (a transformer pass per document; documents
                that come back are cheap, from its embedding cache)
``static``      cosine of static token embeddings distilled from the same model with model2vec
                (:mod:`engines.static_embeddings`): a sum of table rows per document
``bm25``        BM25 (Lucene variant, k1 1.5, b 0.75, as ``bm25s``) over the request's own
                documents, on words: lower-cased, English stop words dropped, Snowball stems
                (:class:`WordAnalyzer`), the first :data:`BM25_READ_WORDS` of each document
``client``      the scores the caller sent with its documents (its retriever's): no work at all
``static+bm25`` reciprocal-rank fusion (k = 60) of ``static`` and ``bm25``
==============  =================================================================================

Both read words without the cross-encoder's tokenizer, so only the documents they keep are
tokenized for the cross-encoder. ``bm25`` ranks as a word BM25 does (WordPiece pieces ranked
worse on held-out collections: BENCHMARKS.md, "First stages on words"). ``static`` reads a plain
ASCII document as BERT pre-tokens cut in numpy, each distinct one tokenized once and remembered
(the same ids, bit for bit: :mod:`engines.words`); any other document through the window's token
cache, which the cross-encoder then reuses (when its tokenizer is MiniLM's own: checked, not
assumed). ``static+bm25`` runs its two stages side by side on the engine's threads.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engines.batching import TextEncoder, TokenCache
from engines.bi_encoder import BiEncoder
from engines.words import MAX_KEYED_CHARS, WORDS, SpanVocabulary
from vocabulary import BI_ENCODER, BM25, CLIENT, STATIC, STATIC_BM25

#: What the scores of a method are (``RerankOutcome.score_kind`` when no cross-encoder scored).
SCORE_KINDS = {BI_ENCODER: "cosine", STATIC: "cosine", BM25: "bm25", CLIENT: "client", STATIC_BM25: "rrf"}
#: Tokens of a text that ``static`` reads at most (fewer when the cross-encoder reads fewer). The
#: texts it does not read as pre-tokens it reads from the window's token cache when that holds no
#: more than this per text; behind a longer-context cross-encoder it tokenizes a 512-token prefix
#: of its own instead, rather than tokenize every candidate as far as it would read the few it keeps.
READ_TOKENS = 512
#: Reciprocal-rank fusion constant (Cormack et al. 2009).
RRF_K = 60
BM25_K1 = 1.5
BM25_B = 0.75
#: Words of a text that ``bm25`` reads at most: more than the ~512 tokens a cross-encoder reads
#: (about 380 English words), far fewer than a long document may hold.
BM25_READ_WORDS = 512
#: A text is read no further than ``BM25_READ_WORDS`` times this many characters (a word and its
#: separator rarely pass 32), so a long document costs what its beginning does.
_WORD_CHARS = 32
#: Runs of two or more word characters: the words of ``bm25s``'s (and scikit-learn's) pattern
#: ``\b\w\w+\b`` (a greedy run is maximal, so the word boundaries add nothing but a third of
#: the time).
_WORD = re.compile(r"\w\w+")
#: Distinct words a :class:`WordAnalyzer` remembers before it starts afresh (a bound on memory
#: against a stream of never-seen words: ~460 bytes each, measured, with their stems and keys, so
#: ~90 MB at most; a collection's vocabulary rarely holds more, and starting afresh costs a
#: request or two the words' first sight).
ANALYZER_WORDS = 200_000
#: Term ids from here up are a single analysis's own (words too long to remember).
_CALL_IDS = 1 << 40


@dataclass
class StageJob:
    """What a first stage sees of one job.

    Attributes:
        query: the query text.
        documents: the candidate texts.
        client_scores: float64, one per document, NaN where the caller sent none; ``None`` when
            it sent none at all.
    """

    query: str
    documents: Sequence[str]
    client_scores: np.ndarray | None = None


class FirstStage(Protocol):
    """Scores every document of every job; one float array per job, higher = more relevant."""

    method: str

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]: ...


@dataclass
class FirstStageRanking:
    """One first stage's verdict on one request (:meth:`engines.Reranker.rank_first_stage`).

    Attributes:
        method: the first stage that scored.
        scores: float32, one per document, higher = more relevant (``SCORE_KINDS[method]``).
        order: document indices, best first (ties by index), as a prefilter keeps them.
    """

    method: str
    scores: np.ndarray
    order: np.ndarray


def ranked(indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``indices`` sorted by ``values`` descending, ties by index ascending."""
    if len(indices) == 0:
        return indices
    return indices[np.lexsort((indices, -values.astype(np.float64)))]


class ClientStage:
    """The caller's own scores, as they are. Every document must have a finite one (the
    reranker checks before any work): a missing score is an error, never a guess."""

    method = CLIENT

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]:
        out = []
        for job in jobs:
            scores = job.client_scores
            if scores is None or len(scores) != len(job.documents) or not np.isfinite(scores).all():
                raise ValueError("prefilter method 'client' needs a finite score for every document")
            out.append(scores.astype(np.float32))
        return out


def bm25_scores(query: np.ndarray, flat: np.ndarray, lengths: np.ndarray, k1: float = BM25_K1,
                b: float = BM25_B) -> np.ndarray:
    """BM25 of each document for the query's term ids, the documents given as their ids run
    together (``flat``) and the number of ids of each (``lengths``), with document frequencies
    and the average length taken over the documents themselves.

    The Lucene variant as ``bm25s`` computes it: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    tf part = tf / (tf + k1 (1 - b + b |d| / avg|d|)), summed over the query's terms (a term
    that occurs twice in the query counts twice). Only the query's terms are counted, so the
    cost is one pass over the documents' ids.
    """
    n = len(lengths)
    out = np.zeros(n, dtype=np.float32)
    terms, weights = np.unique(np.asarray(query, dtype=np.int64), return_counts=True)
    if n == 0 or len(terms) == 0 or lengths.sum() == 0:
        return out
    owner = np.repeat(np.arange(n), lengths)
    slot = np.minimum(np.searchsorted(terms, flat), len(terms) - 1)
    hit = terms[slot] == flat
    tf = np.bincount(owner[hit] * len(terms) + slot[hit], minlength=n * len(terms)).reshape(n, len(terms))
    df = np.count_nonzero(tf, axis=0)
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    norm = k1 * (1 - b + b * lengths / lengths.mean())
    return ((tf / (tf + norm[:, None])) @ (idf * weights)).astype(np.float32)


def read_tokens(texts: Sequence[str], tokens: TokenCache, own: TextEncoder | None = None) -> list[np.ndarray]:
    """Ids of the first :data:`READ_TOKENS` tokens of each text: from the window's cache (which
    the cross-encoder then reuses) when it reads no further than that, else from ``own`` (an
    encoder of the same tokenizer capped at :data:`READ_TOKENS`)."""
    if tokens.cap <= READ_TOKENS or own is None:
        return [ids[:READ_TOKENS] for ids in tokens.encode(texts).ids]
    return own.encode(texts).ids


class WordAnalyzer:
    """Texts as the term ids BM25 counts, the way ``bm25s.tokenize`` with PyStemmer makes them:
    lower-cased runs of two or more word characters (at most the first
    :data:`BM25_READ_WORDS` of a text), English stop words (``bm25s``'s list) dropped, each word
    replaced by its Snowball English stem. Each distinct word is stemmed once and remembered (up to
    :data:`ANALYZER_WORDS`). Plain ASCII texts are cut into words in numpy
    (:class:`engines.words.SpanVocabulary`, the same words), others by a regular expression.
    Term ids are the analyzer's own: compare them only within one :meth:`analyze`."""

    def __init__(self, read_words: int = BM25_READ_WORDS, language: str = "english"):
        # Imported here, as the engines import their runtimes: bm25s brings scipy, and the load
        # generator imports this package without them.
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        self.read_words = int(read_words)
        self._stemmer = Stemmer.Stemmer(language)
        self._stop = frozenset(STOPWORDS_EN)
        self._spans = SpanVocabulary(WORDS, self._learn, ANALYZER_WORDS, forget=self._forget_words, min_length=2)
        self._lock = self._spans.lock  # one lock over the words both ways learn
        self._forget_words()

    def _forget_words(self) -> None:
        self._term_of: dict[str, int] = {}  # word -> term id, -1 for a stop word
        self._stems: dict[str, int] = {}  # stem -> term id

    def _forget(self) -> None:
        self._spans.clear()
        self._forget_words()

    def _learn(self, words: list[str]) -> list[int]:
        """The term ids of ``words`` (distinct), stemming those not seen before. A word longer than
        :data:`engines.words.MAX_KEYED_CHARS` is not remembered (a stream of long junk must not
        fill memory): it gets its stem's id if another word has it, else an id of this call alone,
        which is why a call's words are learnt in one go."""
        term_of, stems = self._term_of, self._stems
        new = [w for w in words if w not in term_of]
        once: dict[str, int] = {}
        for word, stem in zip(new, self._stemmer.stemWords(new)):
            if len(word) <= MAX_KEYED_CHARS:
                term_of[word] = -1 if word in self._stop else stems.setdefault(stem, len(stems))
            else:
                once[word] = stems.get(stem, once.setdefault(stem, _CALL_IDS + len(once)))
        return [term_of[w] if w in term_of else once[w] for w in words]

    def analyze(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The term ids of ``texts`` run together, and how many belong to each text."""
        limit, chars = self.read_words, self.read_words * _WORD_CHARS
        # Control characters are no word's: any ASCII text may take the fast path, unless it holds
        # a word too long to key (Spans.long_texts).
        fast = [i for i, text in enumerate(texts) if text.isascii()]
        spans = self._spans.spans([texts[i] for i in fast], chars, limit) if fast else None  # beside other threads
        fast_texts = np.asarray(fast, dtype=np.int64)
        slow = sorted({*range(len(texts))} - {*fast} | {*fast_texts[spans.long_texts].tolist()}) if spans else \
            list(range(len(texts)))
        words = [_WORD.findall(texts[i][:chars].lower())[:limit] for i in slow]
        flat = list(itertools.chain.from_iterable(words))
        unique = list(dict.fromkeys(flat))
        with self._lock:  # one section: every id of this call in one numbering
            if len(self._term_of) > ANALYZER_WORDS:
                self._forget()
            fast_ids = self._spans.ids(spans) if spans is not None else None  # may start afresh itself
            term_of = dict(zip(unique, self._learn(unique))) if unique else {}
        ids, owner = [], []
        if spans is not None:
            ids.append(fast_ids)
            owner.append(fast_texts[spans.owner])
        if slow:
            ids.append(np.fromiter(map(term_of.__getitem__, flat), dtype=np.int64, count=len(flat)))
            counts = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
            owner.append(np.repeat(np.asarray(slow, dtype=np.int64), counts))
        ids_all = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        owner_all = np.concatenate(owner) if owner else np.zeros(0, dtype=np.int64)
        if len(owner) > 1:  # back in text order
            order = np.argsort(owner_all, kind="stable")
            ids_all, owner_all = ids_all[order], owner_all[order]
        kept = ids_all >= 0
        return ids_all[kept], np.bincount(owner_all[kept], minlength=len(texts)).astype(np.int64)


class Bm25Stage:
    """BM25 over each request's own documents, on words (:class:`WordAnalyzer`): the
    cross-encoder's tokenizer does not run for it."""

    method = BM25

    def __init__(self, analyzer: WordAnalyzer | None = None):
        self.analyzer = analyzer or WordAnalyzer()  # built with the stage: on first use of bm25

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]:
        out = []
        for job in jobs:
            flat, lengths = self.analyzer.analyze([job.query, *job.documents])
            out.append(bm25_scores(flat[: lengths[0]], flat[lengths[0]:], lengths[1:]))
        return out


class BiEncoderStage:
    """Bi-encoder cosines, all texts of the window embedded in one batch (and through the
    window's token cache when the bi-encoder's tokenizer is the cross-encoder's)."""

    method = BI_ENCODER

    def __init__(self, bi_encoder: Callable[[], BiEncoder]):
        self._bi_encoder = bi_encoder  # built on first use

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]:
        texts: list[str] = []
        for job in jobs:
            texts.append(job.query)
            texts.extend(job.documents)
        vectors = self._bi_encoder().embed(texts, tokens)
        out, at = [], 0
        for job in jobs:
            n = len(job.documents)
            query, docs = vectors[at], vectors[at + 1 : at + 1 + n]
            out.append((docs @ query).astype(np.float32) if n else np.zeros(0, dtype=np.float32))
            at += 1 + n
        return out


def reciprocal_rank_fusion(score_lists: Sequence[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """Sum over the lists of 1 / (k + rank), rank 1 = the best score (ties by index)."""
    n = len(score_lists[0])
    fused = np.zeros(n, dtype=np.float64)
    for scores in score_lists:
        rank = np.empty(n, dtype=np.int64)
        rank[ranked(np.arange(n), scores)] = np.arange(1, n + 1)
        fused += 1.0 / (k + rank)
    return fused.astype(np.float32)


class FusionStage:
    """Reciprocal-rank fusion of two or more first stages, run side by side on up to ``threads``
    threads (the engine's CPU budget: a first stage runs between micro-batches, never beside one;
    the stages' numpy work lets go of the GIL)."""

    def __init__(self, method: str, stages: Sequence[FirstStage], threads: int = 1):
        self.method = method
        self.stages = list(stages)
        self.threads = max(1, min(int(threads), len(self.stages)))
        self._pool: ThreadPoolExecutor | None = None

    def score(self, jobs: Sequence[StageJob], tokens: TokenCache | None) -> list[np.ndarray]:
        if self.threads > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="first-stage")
            others = [self._pool.submit(stage.score, jobs, tokens) for stage in self.stages[1:]]
            try:
                first = self.stages[0].score(jobs, tokens)
            finally:  # never leave a stage running beside what the engine does next
                wait(others)
            per_stage = [first, *(future.result() for future in others)]
        else:
            per_stage = [stage.score(jobs, tokens) for stage in self.stages]
        return [reciprocal_rank_fusion([scores[i] for scores in per_stage]) if len(jobs[i].documents)
                else np.zeros(0, dtype=np.float32) for i in range(len(jobs))]
