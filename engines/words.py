"""The words of many texts at once, for the first stages that read words (``bm25``, ``static``).

A Python regular expression over 1,000 documents costs ~10 ms, the same again to look each word up,
and holds the GIL the whole time: that alone was most of ``bm25``'s cost. ASCII texts (nearly all
of an English request) are cut here in a few numpy passes over their bytes instead: a table says
which bytes belong to a word, the edges of the runs are the words, and each word gets a 64-bit key
(a polynomial hash of its bytes, mixed with its length, with a base drawn at random per
:class:`SpanVocabulary`). A key is turned into what a stage needs (a term id, a list of token ids)
once, from the word's text, and remembered. Only words of up to :data:`MAX_KEYED_CHARS`
characters are keyed: two long enough words can be made to collide whatever the base (a
Thue-Morse string of 1,024 letters and its complement do modulo 2**64), so a text holding a longer
one is left to the slow path (``Spans.long_texts``).

Two ways to cut, each the exact equivalent on ASCII text of what the stage's reference does:

* :data:`WORDS`: runs of two or more of ``[A-Za-z0-9_]``, lower-cased: Python's ``\\w\\w+`` on
  ``text.lower()``, as ``bm25s`` tokenizes.
* :data:`BERT_PRE_TOKENS`: runs of letters and digits, and each ASCII punctuation character on its
  own, lower-cased: what an uncased BERT tokenizer's normalizer and pre-tokenizer make of ASCII text
  without control characters (the caller checks the tokenizer, and sends other texts elsewhere).

Texts that are not plain ASCII are the caller's to handle the slow, general way (:func:`is_plain_ascii`).
"""

from __future__ import annotations

import secrets
import string
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: What each byte is: 0 = a separator, 1 = part of a word, 2 = a word of its own (punctuation).
Cut = np.ndarray


def _cut(word: str, alone: str = "") -> Cut:
    table = np.zeros(256, dtype=np.int8)
    table[np.frombuffer(word.encode(), dtype=np.uint8)] = 1
    if alone:
        table[np.frombuffer(alone.encode(), dtype=np.uint8)] = 2
    return table


#: ``\w\w+`` on lower-cased ASCII (single characters are dropped by ``min_length=2``).
WORDS = _cut(string.ascii_letters + string.digits + "_")
#: BERT's pre-tokens: letters and digits run together, each punctuation character (Python's
#: ``string.punctuation`` is exactly BERT's ASCII punctuation) a token of its own.
BERT_PRE_TOKENS = _cut(string.ascii_letters + string.digits, string.punctuation)
#: Printable ASCII with tab, line feed and carriage return. A text holding any other byte (a control
#: character, which BERT's normalizer deletes, joining its neighbours) is not plain ASCII.
_PRINTABLE = bytes([9, 10, 13, *range(32, 127)])
#: Bytes hashed per call at most, so the tables of powers stay small (8 MiB each, while no single
#: text read is longer: the stages read 16,384 characters at most).
_CHUNK_BYTES = 1 << 20
#: The longest word keyed by its hash; a text with a longer one is not cut here (see above).
MAX_KEYED_CHARS = 64
_LENGTH_MIX = np.uint64(0x9E3779B97F4A7C15)


def is_plain_ascii(text: str) -> bool:
    """ASCII with no control character but tab, line feed and carriage return."""
    # bytes.translate deleting the printable bytes: a C loop, 5x faster than a regular expression.
    return text.isascii() and not text.encode("ascii").translate(None, _PRINTABLE)


def plain_ascii(texts: Sequence[str]) -> list[int]:
    """The indices of the texts that are plain ASCII (:func:`is_plain_ascii`), looked at all at
    once first (a text with a control character is rare)."""
    ascii_ = [i for i, text in enumerate(texts) if text.isascii()]
    if "\n".join(texts[i] for i in ascii_).encode("ascii").translate(None, _PRINTABLE):
        ascii_ = [i for i in ascii_ if is_plain_ascii(texts[i])]
    return ascii_


@dataclass
class Spans:
    """The words of a batch of texts: ``keys[i]`` is the ``i``-th word's key and ``owner[i]`` the
    index of its text; words in text order. ``text_of(i)`` is its (lower-cased) text.
    ``long_texts``: the indices of the texts that hold a word longer than
    :data:`MAX_KEYED_CHARS` among those read; their words are left out, for the caller to read them
    the slow way."""

    keys: np.ndarray
    owner: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    data: bytes
    long_texts: np.ndarray

    def text_of(self, i: int) -> str:
        return self.data[self.starts[i] : self.ends[i]].decode("ascii")


class SpanVocabulary:
    """Cuts ASCII texts into words (:meth:`spans`) and maps each word to an int id (:meth:`ids`),
    asking ``learn`` about each distinct word once (its texts in, one id each out) and
    remembering up to ``bound`` words (then it starts afresh, calling ``forget`` first).

    Thread-safe, and only looking words up and learning them holds its :attr:`lock` (a caller that
    reads what ``learn`` keeps holds it too): threads cutting texts run side by side.
    """

    def __init__(self, cut: Cut, learn: Callable[[list[str]], Sequence[int]], bound: int,
                 forget: Callable[[], None] | None = None, min_length: int = 1):
        self.cut = cut
        self._has_lone_bytes = bool((cut == 2).any())
        self.learn = learn
        self.bound = int(bound)
        self.forget = forget
        self.min_length = int(min_length)
        self.base = np.uint64(secrets.randbits(64) | 1)  # odd: invertible modulo 2**64
        # Powers of the base and of its inverse, replaced together (a reader never sees one grown alone).
        self._power_tables = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))
        self._ids: dict[int, int] = {}
        self._lock = threading.RLock()  # ``forget`` may call clear()

    def __len__(self) -> int:
        return len(self._ids)

    def clear(self) -> None:
        """Forget every word (the ids ``learn`` gave are no longer valid)."""
        with self._lock:
            self._ids = {}

    @property
    def lock(self) -> threading.RLock:
        """Held while words are looked up and learnt: hold it to read what ``learn`` keeps."""
        return self._lock

    def _tables(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        powers, inverse = self._power_tables
        if len(powers) < n:
            size = max(n, min(2 * len(powers), _CHUNK_BYTES + 1))
            inverse_base = np.uint64(pow(int(self.base), -1, 1 << 64))
            powers = np.cumprod(np.r_[np.uint64(1), np.full(size - 1, self.base)], dtype=np.uint64)
            inverse = np.cumprod(np.r_[np.uint64(1), np.full(size - 1, inverse_base)], dtype=np.uint64)
            self._power_tables = (powers, inverse)
        return powers[:n], inverse[:n]

    def spans(self, texts: Sequence[str], max_chars: int, max_words: int | None = None) -> Spans:
        """The words of ``texts`` (plain ASCII, :func:`is_plain_ascii`), reading at most
        ``max_chars`` characters and ``max_words`` words of each."""
        chunks: list[tuple[int, list[str]]] = []
        first, parts, size = 0, [], 0
        for i, text in enumerate(texts):  # chunks of at most _CHUNK_BYTES or one text
            part = text[:max_chars]
            if parts and size + len(part) + 1 > _CHUNK_BYTES:
                chunks.append((first, parts))
                first, parts, size = i, [], 0
            parts.append(part)
            size += len(part) + 1
        chunks.append((first, parts))
        pieces = [self._spans_of(first, chunk, max_words) for first, chunk in chunks]
        if len(pieces) == 1:
            return pieces[0]
        offsets = np.cumsum([0, *(len(p.data) for p in pieces[:-1])])
        return Spans(np.concatenate([p.keys for p in pieces]), np.concatenate([p.owner for p in pieces]),
                     np.concatenate([p.starts + o for p, o in zip(pieces, offsets)]),
                     np.concatenate([p.ends + o for p, o in zip(pieces, offsets)]), b"".join(p.data for p in pieces),
                     np.concatenate([p.long_texts for p in pieces]))

    def _spans_of(self, first: int, texts: list[str], max_words: int | None) -> Spans:
        data = np.frombuffer("\n".join(texts).lower().encode("ascii"), dtype=np.uint8)
        kind = np.take(self.cut, data)
        # A word starts at a word byte after a byte of another kind, and ends before one; a lone byte
        # is a word of its own.
        word = kind == 1
        edge = np.empty(len(word) + 1, dtype=bool)
        edge[0], edge[-1] = word[0] if len(word) else False, word[-1] if len(word) else False
        np.not_equal(word[1:], word[:-1], out=edge[1:-1])
        if self._has_lone_bytes:
            alone = kind == 2
            starts = np.flatnonzero((edge[:-1] & word) | alone)
            ends = np.flatnonzero((edge[1:] & word) | alone) + 1
        else:
            edges = np.flatnonzero(edge)
            starts, ends = edges[0::2], edges[1::2]
        if self.min_length > 1:
            long_enough = ends - starts >= self.min_length
            starts, ends = starts[long_enough], ends[long_enough]
        text_starts = np.cumsum([0, *(len(t) + 1 for t in texts[:-1])])
        owner = np.searchsorted(text_starts, starts, side="right") - 1
        if max_words is not None:
            counts = np.bincount(owner, minlength=len(texts))
            rank = np.arange(len(owner)) - (np.cumsum(counts) - counts)[owner]
            within = rank < max_words
            starts, ends, owner = starts[within], ends[within], owner[within]
        too_long = ends - starts > MAX_KEYED_CHARS
        long_texts = np.unique(owner[too_long])
        if len(long_texts):
            keep = ~np.isin(owner, long_texts)
            starts, ends, owner = starts[keep], ends[keep], owner[keep]
        powers, inverse = self._tables(len(data) + 1)
        prefix = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum(data.astype(np.uint64) * powers[: len(data)], out=prefix[1:])
        keys = (prefix[ends] - prefix[starts]) * inverse[starts]
        keys ^= (ends - starts).astype(np.uint64) * _LENGTH_MIX
        return Spans(keys, owner + first, starts, ends, data.tobytes(), long_texts + first)

    def ids(self, spans: Spans) -> np.ndarray:
        """The id of every word of ``spans`` (int64), learning the words not seen before."""
        # Not return_index: it forces a stable sort, twice as slow; any occurrence of a word will do.
        unique, inverse = np.unique(spans.keys, return_inverse=True)
        inverse = inverse.reshape(-1)
        where = np.empty(len(unique), dtype=np.int64)
        where[inverse] = np.arange(len(inverse))
        keys = unique.tolist()
        with self._lock:
            out = np.fromiter((self._ids.get(k, -1 << 62) for k in keys), dtype=np.int64, count=len(keys))
            missing = np.flatnonzero(out == -1 << 62)
            if len(self._ids) + len(missing) > self.bound:  # start afresh: every word is new again
                self._ids = {}
                if self.forget is not None:
                    self.forget()
                missing = np.arange(len(keys))
            if len(missing):
                learnt = self.learn([spans.text_of(where[i]) for i in missing])
                known = self._ids
                for i, value in zip(missing.tolist(), learnt):
                    known[keys[i]] = out[i] = value
        return out[inverse]
