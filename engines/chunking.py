"""What the cross-encoder reads of one job: each selected document whole, truncated, or in parts.

A model reads at most ``max_length`` tokens of a pair, so a document longer than the room beside
the query (``BatchRunner.document_room``) loses the rest. A job chooses what happens then:

- ``max_chunks`` 1 and ``truncation`` ``right`` (the defaults): the document is handed over whole
  and the runner cuts its end, as it always did. No tokenizing is added.
- ``max_chunks`` > 1: the document is split into consecutive *chunks*, each starting at a word
  start and as many tokens long as fit, the next one starting ``overlap`` tokens before the last
  one ended (at the start of the word found there; at most half a chunk); at most ``max_chunks``
  of them. Every chunk is scored with the query and the document takes its best chunk's score.
  The first chunk is exactly what right truncation keeps, so chunking never scores a document
  below its truncated score.
- ``truncation`` ``left``: the same from the end backwards, so the last chunk (the only one with
  ``max_chunks`` 1) is the longest run of whole words at the end that fits.

A part is scored as its own text, ``text[start:end]`` (a chunk is a document of its own to the
runner): the span a result carries scores, alone, exactly what the document was given. Words are
split where whitespace precedes a token, so the spans of a tokenizer without spaces (Chinese,
Japanese) fall on token boundaries instead. A chunk whose text re-tokenizes longer than the room
(a BPE tokenizer may merge differently at its edges) is shortened until it fits.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engines.batching import BatchRunner, TokenCache
from engines.first_stage import SCORE_KINDS
from engines.outcome import LOGIT, BestChunk, RerankOutcome, cross_encoder_outcome
from engines.policy import ChunkOptions, JobPlan
from vocabulary import LEFT

#: A chunk that re-tokenizes longer than the room is shortened at most this many times.
FIT_TRIES = 4


@dataclass
class JobTexts:
    """The pairs of one job: ``query`` (the runner's pair query) with each of ``texts``.

    Attributes:
        query: the query side of every pair (a decoder's prompt head carries the instruction).
        texts: one per pair: a selected document whole, or one part of it.
        document: the document each pair belongs to.
        spans: the pair's ``(start, end)`` characters in its document; ``None`` for a whole one.
        parts: for each document read in parts, how many.
    """

    query: str
    texts: list[str] = field(default_factory=list)
    document: list[int] = field(default_factory=list)
    spans: list[tuple[int, int] | None] = field(default_factory=list)
    parts: dict[int, int] = field(default_factory=dict)

    def add(self, text: str, document: int, span: tuple[int, int] | None = None) -> None:
        self.texts.append(text)
        self.document.append(document)
        self.spans.append(span)

    def best(self, scores: np.ndarray) -> tuple[dict[int, float], dict[int, BestChunk]]:
        """Each document's score (its best part's) from the pairs' ``scores``, and the best part
        of every document read in parts. The first of equal parts wins."""
        best: dict[int, float] = {}
        where: dict[int, int] = {}
        first: dict[int, int] = {}  # a document's first pair: where its parts' numbering starts
        for pair, (doc, score) in enumerate(zip(self.document, scores)):
            first.setdefault(doc, pair)
            if doc not in best or score > best[doc]:
                best[doc], where[doc] = float(score), pair
        chunks = {}
        for doc, count in self.parts.items():
            start, end = self.spans[where[doc]]
            chunks[doc] = BestChunk(where[doc] - first[doc], start, end, count)
        return best, chunks


def job_texts(runner: BatchRunner, query: str, instruction: str | None, documents: Sequence[str],
              selected: Sequence[int], options: ChunkOptions, tokens: TokenCache | None = None) -> JobTexts:
    """The pairs the cross-encoder scores for the ``selected`` documents of a job."""
    out = JobTexts(runner.pair_query(query, instruction))
    if options.whole:
        for d in selected:
            out.add(documents[int(d)], int(d))
        return out
    room = runner.document_room(out.query)
    overlap = min(options.overlap, room // 2)
    for d in map(int, selected):
        spans = split(runner, documents[d], room, options.max_chunks, overlap, options.truncation, tokens)
        if spans is None:
            out.add(documents[d], d)
            continue
        out.parts[d] = len(spans)
        for start, end in spans:
            out.add(documents[d][start:end], d, (start, end))
    return out


def texts_outcome(plan: JobPlan, texts: JobTexts, logits: Sequence[float], first: np.ndarray | None,
                  activation: str, raw_scores: bool) -> RerankOutcome:
    """A job's outcome from its pairs' cross-encoder ``logits`` (one per pair of ``texts``) and,
    for a cut job, its first stage's scores ``first``: each document read takes its best part's."""
    scores = first.astype(np.float32) if plan.prefilter else np.zeros(plan.documents, dtype=np.float32)
    cross_encoded = np.zeros(plan.documents, dtype=bool)
    best, chunks = texts.best(np.asarray(logits, dtype=np.float32))
    for document, score in best.items():
        scores[document] = score
        cross_encoded[document] = True
    kind = LOGIT if best or not plan.prefilter else SCORE_KINDS[plan.method]
    return cross_encoder_outcome(plan, scores, cross_encoded, kind, activation, raw_scores, chunks, len(texts.texts))


def split(runner: BatchRunner, text: str, room: int, max_chunks: int, overlap: int, truncation: str,
          tokens: TokenCache | None = None) -> list[tuple[int, int]] | None:
    """Character spans of ``text``'s parts, in document order; ``None`` when it fits ``room``."""
    encoding = runner.tokenizer.encode(text, add_special_tokens=False)
    offsets = encoding.offsets
    n = len(offsets)
    if n <= room:
        return None
    starts = word_starts(text, offsets)
    bounds = (_backward if truncation == LEFT else _forward)(starts, n, room, max_chunks, overlap)
    return _fit(runner, text, offsets, bounds, room, tokens)


def word_starts(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Indices of the tokens that begin a word: the first, and any that whitespace precedes (or
    that begins with it, as a byte-level BPE token carries its leading space)."""
    starts = [0] if offsets else []
    for i in range(1, len(offsets)):
        begin = offsets[i][0]
        if begin > offsets[i - 1][1] or text[begin].isspace() or (begin > 0 and text[begin - 1].isspace()):
            if begin != offsets[i - 1][0]:  # a character split into several tokens starts no word
                starts.append(i)
    return starts


def _forward(starts: list[int], n: int, room: int, max_chunks: int, overlap: int) -> list[tuple[int, int]]:
    """Token bounds of the chunks from the start: the first is what right truncation keeps."""
    bounds: list[tuple[int, int]] = []
    s = 0
    while True:
        e = min(n, s + room)
        bounds.append((s, e))
        if e == n or len(bounds) == max_chunks:
            return bounds
        target = max(s + 1, e - overlap)
        k = bisect_right(starts, target) - 1
        s = starts[k] if k >= 0 and starts[k] > s else target  # a word longer than a chunk is cut


def _backward(starts: list[int], n: int, room: int, max_chunks: int, overlap: int) -> list[tuple[int, int]]:
    """Token bounds of the chunks from the end, each starting at a word start where one lies
    within it; returned in document order."""
    bounds: list[tuple[int, int]] = []
    e = n
    while True:
        low = max(0, e - room)
        k = bisect_left(starts, low)
        s = starts[k] if low > 0 and k < len(starts) and starts[k] < e else low
        bounds.append((s, e))
        if s == 0 or len(bounds) == max_chunks:
            return bounds[::-1]
        e = max(1, min(e - 1, s + overlap))


def _fit(runner: BatchRunner, text: str, offsets, bounds: list[tuple[int, int]], room: int,
         tokens: TokenCache | None) -> list[tuple[int, int]]:
    """The character spans of the token ``bounds``, each shortened at its end until its text,
    tokenized alone, fits ``room``."""
    bounds = list(bounds)
    todo = list(range(len(bounds)))
    for _ in range(FIT_TRIES):
        texts = [text[offsets[bounds[i][0]][0]:offsets[bounds[i][1] - 1][1]] for i in todo]
        over = {i: length - room for i, length in zip(todo, runner.encoder.encode(texts, tokens).lengths)
                if length > room and bounds[i][1] - bounds[i][0] > 1}
        for i, excess in over.items():
            s, e = bounds[i]
            bounds[i] = (s, max(s + 1, e - excess))
        todo = list(over)
        if not todo:
            break
    return [(offsets[s][0], offsets[e - 1][1]) for s, e in bounds]
