"""The batching core shared by every engine.

A window of pairs (or texts) is scored in four steps:

1. **Tokenize once.** Each *distinct* text of the window (a query is shared by all its documents,
   a document may recur) is encoded once by the model's Rust tokenizer, without special tokens
   (:class:`TextEncoder`); a first stage with the same tokenizer hands over what it already
   encoded (:class:`TokenCache`). Very long texts are first cut at a space far beyond what the
   model can read, so a 100 KB document costs what a 5 KB one does; the result is still exactly
   the tokenizer's.
2. **Assemble.** Pair sequences are built from those token ids with the tokenizer's own template
   (``[CLS] q [SEP] d [SEP]`` for BERT) and its ``longest_first`` truncation, reproduced exactly.
3. **Plan.** Sequences are sorted by length and cut into micro-batches whose padded size
   (sequences x longest sequence) stays under a token budget and a sequence cap, so there is
   almost no padding and no batch is too big for the device. For a backend that compiles code
   per input shape (OpenVINO's CPU plugin keeps it for good), widths and batch sizes are drawn
   from a few buckets instead, so a worker meets a bounded number of shapes (see ``shape_buckets``).
4. **Run and scatter.** Each micro-batch is padded into numpy arrays and run by the engine's
   backend on a helper thread while the next one is padded; results land at their original
   positions.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Backend(Protocol):
    """What an engine runs: padded int64 arrays in, one float32 row per sequence out
    (a logit for cross-encoders, a normalised embedding for bi-encoders)."""

    runtime: str
    device: str
    precision: str
    # True: give this backend only bucketed shapes (see plan_micro_batches). Optional attribute.
    shape_buckets: bool

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray: ...


@dataclass
class BatchStats:
    """Cumulative counters, for benchmarks and metrics."""

    calls: int = 0
    sequences: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    tokenize_s: float = 0.0
    run_s: float = 0.0
    total_s: float = 0.0

    def add(self, other: BatchStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class PreparedPairs:
    """Pairs tokenized and assembled, ready to be cut into micro-batches in any order.

    Attributes:
        lengths: each pair's sequence length, special tokens included.
        build: ``build(rows, width)`` pads the pairs ``rows`` to ``width`` tokens: the backend's
            ``(input_ids, attention_mask, token_type_ids)``.
        tokenize_s: what tokenizing and assembling them took.
    """

    lengths: np.ndarray
    build: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    tokenize_s: float = 0.0


@dataclass(frozen=True)
class _Template:
    """Special tokens around one or two sequences, read from the tokenizer's post-processor."""

    single: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]  # prefix ids/types, suffix ids/types, type
    pair: tuple[np.ndarray, ...]  # prefix, middle, suffix ids and their types, then seq-0 and seq-1 type
    single_added: int
    pair_added: int


def _read_template(tokenizer) -> _Template:
    """Find where the post-processor puts special tokens by running it on one-token sequences."""
    a = tokenizer.encode("a", add_special_tokens=False)
    b = tokenizer.encode("b", add_special_tokens=False)
    if len(a.ids) != 1 or len(b.ids) != 1:
        raise ValueError("the tokenizer does not encode 'a' and 'b' as one token each; cannot read its template")

    def split(encoding, n_sequences):
        ids = np.asarray(encoding.ids, dtype=np.int64)
        types = np.asarray(encoding.type_ids, dtype=np.int64)
        content = [i for i, special in enumerate(encoding.special_tokens_mask) if not special]
        if len(content) != n_sequences:
            raise ValueError(f"unexpected post-processor output {encoding.tokens}")
        bounds = [-1, *content, len(ids)]
        parts_ids = [ids[bounds[k] + 1 : bounds[k + 1]] for k in range(n_sequences + 1)]
        parts_types = [types[bounds[k] + 1 : bounds[k + 1]] for k in range(n_sequences + 1)]
        return parts_ids, parts_types, [int(types[i]) for i in content]

    single_ids, single_types, single_content = split(tokenizer.post_process(a, None, add_special_tokens=True), 1)
    pair_ids, pair_types, pair_content = split(tokenizer.post_process(a, b, add_special_tokens=True), 2)
    return _Template(
        single=(single_ids[0], single_types[0], single_ids[1], single_types[1], single_content[0]),
        pair=(*pair_ids, *pair_types, *pair_content),
        single_added=sum(len(p) for p in single_ids),
        pair_added=sum(len(p) for p in pair_ids),
    )


def _clip_at_space(text: str, limit: int) -> str:
    """``text`` cut before the whitespace run that starts at or before ``limit`` characters.

    Tokenizers split words at whitespace, so the tokens of the cut text are a prefix of the
    tokens of the whole text (the caller checks there are enough of them)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    while cut > 0 and text[cut - 1].isspace():
        cut -= 1
    return text[:cut] if cut > 0 else text


@dataclass
class _Texts:
    """Token ids of distinct texts: at most ``cap`` ids each, with the full length when known."""

    ids: list[np.ndarray] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # full token count, or the count of a cut text
    cut: list[bool] = field(default_factory=list)  # True: the text was cut, its length is a lower bound


def tokenizer_signature(tokenizer) -> str:
    """A digest of what decides how ``tokenizer`` turns text into ids (vocabulary, normaliser,
    pre-tokenizer, added tokens), leaving out what it does around them (padding, truncation,
    special-token template, decoding). Two tokenizers with the same signature give the same ids
    for any text, so one can reuse the other's work."""
    spec = json.loads(tokenizer.to_str())
    for key in ("padding", "truncation", "post_processor", "decoder", "version"):
        spec.pop(key, None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class TokenCache:
    """Token ids of the texts of one window, so that stages whose tokenizers agree (same
    :func:`tokenizer_signature`) tokenize each text once between them.

    It is filled by its ``owner`` (the cross-encoder's encoder), so entries hold at most
    ``owner.cap`` ids; an encoder reading no more than that can use them. ``seconds`` is the
    time spent tokenizing into it.
    """

    def __init__(self, owner: TextEncoder):
        self.owner = owner
        self.signature = owner.signature
        self.cap = owner.cap
        self.entries: dict[str, tuple[np.ndarray, int, bool]] = {}
        self.seconds = 0.0

    def usable_by(self, encoder: TextEncoder) -> bool:
        return encoder.signature == self.signature and encoder.cap <= self.cap

    def encode(self, texts: Sequence[str]) -> _Texts:
        """Ids of ``texts`` as the owner reads them; only texts not seen before are tokenized."""
        todo = list(dict.fromkeys(t for t in texts if t not in self.entries))
        if todo:
            started = time.perf_counter()
            fresh = self.owner._encode(todo)
            for text, ids, length, cut in zip(todo, fresh.ids, fresh.lengths, fresh.cut):
                self.entries[text] = (ids, length, cut)
            self.seconds += time.perf_counter() - started
        out = _Texts()
        for text in texts:
            ids, length, cut = self.entries[text]
            out.ids.append(ids)
            out.lengths.append(length)
            out.cut.append(cut)
        return out


#: A batch of fewer texts is tokenized in one call: splitting it would cost more than it saves.
PARALLEL_TOKENIZE_TEXTS = 64


class TextEncoder:
    """Token ids of texts, without special tokens, at most ``cap`` ids each.

    A very long text is first cut at a space far beyond what ``cap`` tokens can span, so a
    100 KB document costs what a 5 KB one does; the ids are still exactly the tokenizer's (the
    cut is undone when it leaves fewer than ``cap`` tokens).

    A large batch is split over ``threads`` threads (the Rust tokenizer lets go of the GIL while
    it works), so tokenizing uses the cores inference does, whatever ``TOKENIZERS_PARALLELISM``
    says; the engine tokenizes between micro-batches, never beside one, so the two do not compete.
    """

    def __init__(self, tokenizer, cap: int, threads: int = 1):
        self.tokenizer = tokenizer
        self.cap = int(cap)
        # ~10 characters per kept token leaves a wide margin (English averages 4-5).
        self.clip_chars = self.cap * 10
        self.signature = tokenizer_signature(tokenizer)
        self.threads = max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _encode_batch(self, texts: list[str]) -> list:
        """``encode_batch_fast`` of ``texts``, split over the threads when there are many."""
        if self.threads == 1 or len(texts) < PARALLEL_TOKENIZE_TEXTS:
            return self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tokenize")
        step = -(-len(texts) // self.threads)

        def encode(at: int) -> list:
            return self.tokenizer.encode_batch_fast(texts[at : at + step], add_special_tokens=False)

        return [encoding for part in self._pool.map(encode, range(0, len(texts), step)) for encoding in part]

    def new_cache(self) -> TokenCache:
        """An empty cache of one window, filled by this encoder."""
        return TokenCache(self)

    def encode(self, texts: Sequence[str], cache: TokenCache | None = None) -> _Texts:
        """Ids of ``texts``, through ``cache`` when this encoder may use it (texts another stage
        already tokenized are not tokenized again)."""
        if cache is None or not cache.usable_by(self):
            return self._encode(texts)
        shared = cache.encode(texts)
        if cache.cap > self.cap:
            shared.ids = [ids[: self.cap] for ids in shared.ids]
        return shared

    def _encode(self, texts: Sequence[str]) -> _Texts:
        clipped = [_clip_at_space(t, self.clip_chars) for t in texts]
        encodings = self._encode_batch(clipped)
        out = _Texts()
        redo = []
        for i, (text, short, encoding) in enumerate(zip(texts, clipped, encodings)):
            ids = encoding.ids
            was_cut = short is not text
            if was_cut and len(ids) < self.cap:
                redo.append(i)  # the cut text has too few tokens to stand for the whole: encode all
            out.ids.append(np.asarray(ids[: self.cap], dtype=np.int64))
            out.lengths.append(len(ids))
            out.cut.append(was_cut)
        if redo:
            self.encode_whole(texts, out, redo)
        return out

    def encode_whole(self, texts: Sequence[str], out: _Texts, indices: list[int]) -> None:
        """Tokenize ``texts[i]`` for ``i`` in ``indices`` in full, to learn their real length."""
        encodings = self._encode_batch([texts[i] for i in indices])
        for i, encoding in zip(indices, encodings):
            out.ids[i] = np.asarray(encoding.ids[: self.cap], dtype=np.int64)
            out.lengths[i] = len(encoding.ids)
            out.cut[i] = False


# Shape buckets: a width is rounded up to a multiple of 1/8 of the power of two below it (at
# least 8), so 8 widths per doubling, at most 1/8 of padding added and ~4% on average; a batch
# size is rounded down to 2^k or 3 x 2^k, the rest of the sequences going to the next batch.
# A 512-token model then meets at most 32 widths x 12 sizes (at 64 pairs per batch).
SIZE_BUCKETS = tuple(sorted({1, *(2**k for k in range(1, 16)), *(3 * 2**k for k in range(15))}))


def bucket_width(longest: int, max_length: int) -> int:
    """The padded width of a micro-batch whose longest sequence has ``longest`` tokens, when
    shapes are bucketed; never beyond ``max_length`` (the model reads no more)."""
    step = max(8, 1 << max(0, longest.bit_length() - 4))
    return max(longest, min(-(-longest // step) * step, max_length))


def plan_micro_batches(lengths: np.ndarray, max_batch_tokens: int, max_batch_pairs: int,
                       shape_buckets: bool = False, max_length: int | None = None) -> list[tuple[np.ndarray, int]]:
    """Micro-batches as (indices, padded width): longest sequences first, each batch as many
    sequences as fit ``count x width <= max_batch_tokens`` and ``count <= max_batch_pairs`` (at
    least one). The width is the longest sequence's length, or with ``shape_buckets`` its bucket
    (:func:`bucket_width`, capped at ``max_length``), and the count then a :data:`SIZE_BUCKETS`
    value."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        width = bucket_width(longest, max_length or longest) if shape_buckets else longest
        size = max(1, min(max_batch_pairs, max_batch_tokens // max(width, 1), len(order) - start))
        if shape_buckets:
            size = max(b for b in SIZE_BUCKETS if b <= size)
        batches.append((order[start : start + size], width))
        start += size
    return batches


def longest_first(budget: int, n1: int, n2: int) -> tuple[int, int]:
    """Kept lengths of two sequences of ``n1`` and ``n2`` tokens under ``longest_first``
    truncation to ``budget`` tokens, as the Rust tokenizer computes them
    (tokenizers/src/utils/truncation.rs)."""
    if n1 + n2 <= budget:
        return n1, n2
    swap = n1 > n2
    short, long_ = (n2, n1) if swap else (n1, n2)
    long_ = short if short > budget else max(short, budget - short)
    if short + long_ > budget:
        short = budget // 2
        long_ = short + budget % 2
    return (long_, short) if swap else (short, long_)


class BatchRunner:
    """Tokenizes, batches and runs pairs or single texts through a :class:`Backend`.

    Args:
        tokenizer: the model's ``tokenizers.Tokenizer`` (padding and truncation off).
        backend: what runs the padded batches.
        max_length: truncation length of a whole sequence, special tokens included.
        pad_id: id of the padding token.
        max_batch_tokens / max_batch_pairs: micro-batch limits (see :func:`plan_micro_batches`).
        max_backlog_batch_tokens: the token budget of a micro-batch a scheduler cuts from a backlog
            of jobs as urgent as each other (:mod:`engines.scheduler`); never below
            ``max_batch_tokens``, which it is when None.
        tokenize_threads: threads a large batch of texts is tokenized on (:class:`TextEncoder`).
        overlap: run micro-batches on a helper thread so that the next one is padded meanwhile.
    """

    def __init__(self, tokenizer, backend: Backend, max_length: int, pad_id: int, max_batch_tokens: int,
                 max_batch_pairs: int, max_backlog_batch_tokens: int | None = None, overlap: bool = True,
                 tokenize_threads: int = 1):
        self.tokenizer = tokenizer
        self.backend = backend
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_pairs = int(max_batch_pairs)
        self.max_backlog_batch_tokens = max(self.max_batch_tokens, int(max_backlog_batch_tokens or 0))
        self.overlap = overlap
        self.shape_buckets = bool(getattr(backend, "shape_buckets", False))
        self.template = _read_template(tokenizer)
        if self.max_length <= self.template.pair_added:
            raise ValueError(f"max_length {self.max_length} leaves no room for text between the special tokens")
        # The tokens a pair holds for its query and document, special tokens left out.
        self.text_budget = self.max_length - self.template.pair_added
        # No text keeps more than max_length tokens.
        self.encoder = TextEncoder(tokenizer, self.max_length, tokenize_threads)
        self.cap = self.encoder.cap
        self.clip_chars = self.encoder.clip_chars
        self.stats = BatchStats()
        self._lock = threading.Lock()  # stats may be read from another thread
        self._executor: ThreadPoolExecutor | None = None

    # -- tokenization ---------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str], cache: TokenCache | None = None) -> _Texts:
        return self.encoder.encode(texts, cache)

    def _encode_whole(self, texts: Sequence[str], out: _Texts, indices: list[int]) -> None:
        self.encoder.encode_whole(texts, out, indices)

    # -- what a pair holds ------------------------------------------------------------------------
    #: Whether a pair's query side has a place for a task instruction (a decoder's prompt does).
    takes_instruction = False

    def pair_query(self, query: str, instruction: str | None = None) -> str:
        """The query side of a pair: the query itself (a cross-encoder reads no instruction)."""
        if instruction is not None:
            raise ValueError("this model reads no instruction: only decoder rerankers take one")
        return query

    def document_room(self, query: str) -> int:
        """How many tokens of a document fit beside ``query`` (a :meth:`pair_query`) untruncated."""
        [length] = self.encoder.encode([query]).lengths
        return longest_first(self.text_budget, int(length), 1 << 30)[1]

    # -- public entry points ----------------------------------------------------------------------
    def score_pairs(self, queries: Sequence[str], documents: Sequence[str], pair_query: np.ndarray, pair_doc: np.ndarray,
                    tokens: TokenCache | None = None) -> np.ndarray:
        """Run pairs ``(queries[pair_query[k]], documents[pair_doc[k]])``; one output row per pair.

        ``queries`` are :meth:`pair_query` texts (a cross-encoder's are the queries themselves).
        ``queries`` and ``documents`` should hold distinct texts; pairs refer to them by index, so
        each is tokenized once however many pairs use it. Texts already in ``tokens`` (a first
        stage with the same tokenizer read them) are not tokenized again.
        """
        started = time.perf_counter()
        if len(pair_query) == 0:
            return np.zeros((0,), dtype=np.float32)
        prepared = self.prepare_pairs(queries, documents, pair_query, pair_doc, tokens)
        return self._run(prepared.lengths, prepared.build, started, started + prepared.tokenize_s)

    def prepare_pairs(self, queries: Sequence[str], documents: Sequence[str], pair_query: np.ndarray,
                      pair_doc: np.ndarray, tokens: TokenCache | None = None) -> PreparedPairs:
        """Steps 1 and 2 for pairs (as :meth:`score_pairs` takes them): their lengths, and what pads
        any of them into a micro-batch, so that a scheduler may run them in any order and mix them
        with other jobs' pairs (:meth:`run_micro_batch`)."""
        started = time.perf_counter()
        n = len(pair_query)
        q_texts = self._encode(queries, tokens)
        d_texts = self._encode(documents, tokens)
        n1 = np.empty(n, dtype=np.int64)
        n2 = np.empty(n, dtype=np.int64)
        for k in range(n):
            qi, di = int(pair_query[k]), int(pair_doc[k])
            a, b = q_texts.lengths[qi], d_texts.lengths[di]
            if (q_texts.cut[qi] or d_texts.cut[di]) and min(a, b) >= self.cap:
                # Both sides are long and at least one length is only a lower bound: which side is
                # longer decides who keeps the odd token, so both must be counted in full.
                if q_texts.cut[qi]:
                    self._encode_whole(queries, q_texts, [qi])
                if d_texts.cut[di]:
                    self._encode_whole(documents, d_texts, [di])
                a, b = q_texts.lengths[qi], d_texts.lengths[di]
            n1[k], n2[k] = longest_first(self.text_budget, a, b)
        lengths = n1 + n2 + self.template.pair_added
        prefix, middle, suffix, prefix_t, middle_t, suffix_t, type_a, type_b = self.template.pair

        def build(rows: np.ndarray, width: int):
            ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            types = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            p, m, s = len(prefix), len(middle), len(suffix)
            for r, k in enumerate(rows):
                a, b = int(n1[k]), int(n2[k])
                q_ids = q_texts.ids[int(pair_query[k])]
                d_ids = d_texts.ids[int(pair_doc[k])]
                row, trow = ids[r], types[r]
                row[:p], trow[:p] = prefix, prefix_t
                row[p : p + a], trow[p : p + a] = q_ids[:a], type_a
                o = p + a
                row[o : o + m], trow[o : o + m] = middle, middle_t
                o += m
                row[o : o + b], trow[o : o + b] = d_ids[:b], type_b
                o += b
                row[o : o + s], trow[o : o + s] = suffix, suffix_t
                mask[r, : o + s] = 1
            return ids, mask, types

        return PreparedPairs(lengths, build, time.perf_counter() - started)

    def embed_texts(self, texts: Sequence[str], tokens: TokenCache | None = None) -> np.ndarray:
        """Run single texts; one output row per text (texts in ``tokens`` are not tokenized again)."""
        started = time.perf_counter()
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        encoded = self._encode(texts, tokens)
        budget = self.max_length - self.template.single_added
        kept = np.minimum(np.asarray(encoded.lengths, dtype=np.int64), budget)
        tokenized = time.perf_counter()
        prefix, prefix_t, suffix, suffix_t, type_a = self.template.single
        lengths = kept + self.template.single_added

        def build(rows: np.ndarray, width: int):
            ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            types = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            p, s = len(prefix), len(suffix)
            for r, k in enumerate(rows):
                a = int(kept[k])
                row, trow = ids[r], types[r]
                row[:p], trow[:p] = prefix, prefix_t
                row[p : p + a], trow[p : p + a] = encoded.ids[k][:a], type_a
                row[p + a : p + a + s], trow[p + a : p + a + s] = suffix, suffix_t
                mask[r, : p + a + s] = 1
            return ids, mask, types

        return self._run(lengths, build, started, tokenized)

    # -- running ----------------------------------------------------------------------------------
    def _run(self, lengths: np.ndarray, build, started: float, tokenized: float) -> np.ndarray:
        """Run the planned micro-batches. While the backend runs one (it releases the GIL), this
        thread pads the next, so preparing inputs stays off the critical path."""
        stats = BatchStats(calls=1, sequences=len(lengths), tokenize_s=tokenized - started)
        out = None
        pending = None  # (rows, future) of the micro-batch in flight

        def collect(rows, future):
            nonlocal out
            result, seconds = future.result()
            result = np.asarray(result, dtype=np.float32)
            if out is None:
                out = np.empty((len(lengths), *result.shape[1:]), dtype=np.float32)
            out[rows] = result
            stats.run_s += seconds

        try:
            plan = plan_micro_batches(lengths, self.max_batch_tokens, self.max_batch_pairs, self.shape_buckets,
                                      self.max_length)
            for rows, width in plan:
                build_start = time.perf_counter()
                arrays = build(rows, width)
                stats.tokenize_s += time.perf_counter() - build_start  # padding is input preparation
                if pending is not None:
                    collect(*pending)
                    pending = None
                pending = (rows, self._submit(arrays))
                stats.batches += 1
                stats.padded_tokens += len(rows) * width
                stats.real_tokens += int(lengths[rows].sum())
            if pending is not None:
                collect(*pending)
                pending = None
        finally:
            if pending is not None:  # an earlier batch failed: do not leave this one running alone
                pending[1].exception()
        stats.total_s = time.perf_counter() - started
        with self._lock:
            self.stats.add(stats)
        return out

    def count_tokenizing(self, seconds: float) -> None:
        """Adds tokenizing done outside :meth:`score_pairs` (a scheduler's
        :meth:`prepare_pairs`) to ``stats``."""
        with self._lock:
            self.stats.tokenize_s += seconds
            self.stats.total_s += seconds

    def run_micro_batch(self, parts: Sequence[tuple[PreparedPairs, np.ndarray]], width: int,
                        size: int | None = None) -> np.ndarray:
        """Run one micro-batch of pairs from several :class:`PreparedPairs` (``(prepared, rows)``
        each) at ``width`` tokens; one output row per pair, in the order given. ``size`` pads the
        batch to that many sequences with copies of its last one (a shape-bucketed backend meets
        only bucketed sizes); their outputs are dropped."""
        started = time.perf_counter()
        built = [prepared.build(np.asarray(rows), width) for prepared, rows in parts]
        arrays = [np.concatenate([b[i] for b in built]) for i in range(3)]
        count = len(arrays[0])
        if size is not None and size > count:
            arrays = [np.concatenate([a, np.repeat(a[-1:], size - count, axis=0)]) for a in arrays]
        prepared_at = time.perf_counter()
        result, seconds = self._timed_run(arrays)
        real = sum(int(prepared.lengths[np.asarray(rows)].sum()) for prepared, rows in parts)
        stats = BatchStats(calls=1, sequences=count, batches=1, real_tokens=real,
                           padded_tokens=len(arrays[0]) * width, tokenize_s=prepared_at - started, run_s=seconds,
                           total_s=time.perf_counter() - started)
        with self._lock:
            self.stats.add(stats)
        return np.asarray(result, dtype=np.float32)[:count]

    def _submit(self, arrays) -> Future:
        if not self.overlap:
            done: Future = Future()
            done.set_result(self._timed_run(arrays))
            return done
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-run")
        return self._executor.submit(self._timed_run, arrays)

    def _timed_run(self, arrays):
        start = time.perf_counter()
        result = self.backend.run(*arrays)
        return result, time.perf_counter() - start

    def close(self) -> None:
        """Stop the helper thread (it is also stopped with the interpreter)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
