"""The batching core without a neural network: tokenization, truncation, planning and scatter.

The backend here is a recorder or a cheap deterministic function of each row, so these tests are
exact and fast; the engine tests check the same paths with real models.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest_engines import NON_ASCII, edge_documents, fresh_seed, random_text, test_model_path, vocabulary  # noqa: F401

from engines.batching import SIZE_BUCKETS, BatchRunner, bucket_width, plan_micro_batches
from engines.corpus import MAX_WORDS, MIN_WORDS, load_passages, queries_with_sources
from engines.models import ModelFolder, load_fast_tokenizer


class RowFingerprint:
    """Backend whose output for a row depends only on that row's unpadded content (and is
    different for different content), so any mix-up in batching or scatter shows."""

    runtime, device, precision = "fake", "cpu", "fp32"

    def __init__(self):
        self.calls = []

    def run(self, input_ids, attention_mask, token_type_ids):
        self.calls.append(input_ids.shape)
        out = np.empty(len(input_ids), dtype=np.float64)
        for r in range(len(input_ids)):
            n = int(attention_mask[r].sum())
            assert attention_mask[r, n:].sum() == 0, "padding must be at the end"
            ids = input_ids[r, :n].astype(np.float64)
            types = token_type_ids[r, :n].astype(np.float64)
            out[r] = float(np.sum((ids + 7 * types) * np.sin(np.arange(1, n + 1)))) + n
        return out


class Recorder:
    runtime, device, precision = "record", "cpu", "fp32"

    def __init__(self):
        self.rows = []

    def run(self, input_ids, attention_mask, token_type_ids):
        for r in range(len(input_ids)):
            n = int(attention_mask[r].sum())
            self.rows.append((input_ids[r, :n].tolist(), token_type_ids[r, :n].tolist()))
        return np.zeros(len(input_ids), dtype=np.float32)


@pytest.fixture(scope="module")
def tokenizer(test_model_path):
    folder = ModelFolder.load(test_model_path)
    tok, _, pad = load_fast_tokenizer(folder)
    return tok, pad


def _reference(tok, max_length):
    """The tokenizer as transformers drives it for ``truncation=True`` (longest_first)."""
    ref = tok.__class__.from_str(tok.to_str())
    ref.enable_truncation(max_length, strategy="longest_first")
    return ref


@pytest.mark.parametrize("max_length", [8, 17, 64, 512])
def test_pairs_are_encoded_exactly_like_the_tokenizer(tokenizer, max_length):
    tok, pad = tokenizer
    rng = random.Random(fresh_seed(f"pair encoding, max_length={max_length}"))
    words = vocabulary()
    texts = [random_text(rng, words, 0, 40) for _ in range(30)] + NON_ASCII + ["", "   "]
    # Both sides longer than the budget, at odd and even budgets: who keeps the odd token.
    texts += [random_text(rng, words, 2 * max_length, 3 * max_length) for _ in range(4)]
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(150)]
    pairs += [(a, b) for a in texts[-8:] for b in texts[-8:]]  # every long/edge combination
    # Texts past BatchRunner.clip_chars (10 characters per token of max_length) are cut before
    # tokenizing; when both sides of a pair are cut, the runner must count them in full.
    assert sum(len(t) > 10 * max_length for t in texts[-4:]) >= 2
    if max_length == 512:
        # The reference tokenizer materialises every overflowing window of both texts: 100 KB
        # documents fit in memory only against a short partner.
        huge = [d for d in edge_documents(rng) if len(d) >= 100_000]
        pairs += [(h, t) for h in huge for t in rng.sample(texts[:-4], 5)]
        pairs += [(t, h) for h in huge for t in rng.sample(texts[:-4], 5)]
    recorder = Recorder()
    runner = BatchRunner(tok, recorder, max_length, pad, max_batch_tokens=10**9, max_batch_pairs=10**9)
    reference = _reference(tok, max_length)
    zero = np.zeros(1, dtype=np.int64)
    for k, (query, doc) in enumerate(pairs):
        recorder.rows.clear()
        runner.score_pairs([query], [doc], zero, zero)
        expected = reference.encode(query, doc)
        assert recorder.rows == [(expected.ids, expected.type_ids)], f"pair {k} differs"


def test_single_texts_are_encoded_exactly_like_the_tokenizer(tokenizer):
    tok, pad = tokenizer
    rng = random.Random(fresh_seed("single encoding"))
    words = vocabulary()
    texts = [random_text(rng, words, 0, 300) for _ in range(20)] + edge_documents(rng)
    ref = _reference(tok, 256)
    recorder = Recorder()
    runner = BatchRunner(tok, recorder, 256, pad, max_batch_tokens=1, max_batch_pairs=1)
    for text, expected in zip(texts, ref.encode_batch(texts)):
        recorder.rows.clear()
        runner.embed_texts([text])
        assert recorder.rows == [(expected.ids, expected.type_ids)]


def test_a_large_batch_tokenized_on_several_threads_gives_the_ids_of_one(tokenizer):
    from engines.batching import PARALLEL_TOKENIZE_TEXTS, TextEncoder

    tokenizer, _ = tokenizer
    rng = random.Random(fresh_seed("threads"))
    texts = [*edge_documents(rng), *NON_ASCII, *load_passages(5 * PARALLEL_TOKENIZE_TEXTS)]
    rng.shuffle(texts)
    one, three = TextEncoder(tokenizer, 256), TextEncoder(tokenizer, 256, threads=3)
    calls = []
    real = tokenizer.encode_batch_fast

    class Counting:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def encode_batch_fast(self, batch, add_special_tokens=False):
            calls.append(len(batch))
            return real(batch, add_special_tokens=add_special_tokens)

    three.tokenizer = Counting()
    alone, split = one.encode(texts), three.encode(texts)
    assert len(calls) >= 3 and sum(calls[:3]) == len(texts)  # split in three (the redo of cut texts aside)
    assert [list(ids) for ids in split.ids] == [list(ids) for ids in alone.ids]
    assert split.lengths == alone.lengths and split.cut == alone.cut
    calls.clear()
    three.encode(texts[: PARALLEL_TOKENIZE_TEXTS - 1])
    assert len(calls) == 1  # a small batch is not split


def test_micro_batch_plan_respects_budget_and_covers_every_sequence():
    rng = np.random.default_rng(fresh_seed("plan"))
    lengths = rng.integers(3, 512, size=777)
    for budget, cap in [(2048, 64), (512, 8), (100, 1000), (65536, 512)]:
        for buckets in (False, True):
            batches = plan_micro_batches(lengths, budget, cap, shape_buckets=buckets, max_length=512)
            seen = np.sort(np.concatenate([rows for rows, _ in batches]))
            assert np.array_equal(seen, np.arange(len(lengths)))
            for rows, width in batches:
                assert len(rows) <= cap
                assert len(rows) == 1 or len(rows) * width <= budget
                assert lengths[rows[0]] == lengths[rows].max()  # longest first
                if buckets:
                    assert width == bucket_width(int(lengths[rows[0]]), 512) and len(rows) in SIZE_BUCKETS
                else:
                    assert width == lengths[rows[0]]
            widths = [width for _, width in batches]
            assert widths == sorted(widths, reverse=True)
            if buckets:  # what bounds the memory of a backend that compiles code per shape
                assert len(set(widths)) <= 32 and len({len(rows) for rows, _ in batches}) <= 15


def test_bucketed_widths_add_little_padding_and_respect_max_length():
    widths = {bucket_width(n, 512) for n in range(1, 513)}
    assert len(widths) == 32 and max(widths) == 512
    for n in range(64, 513):
        assert n <= bucket_width(n, 512) <= n * 9 / 8
    assert bucket_width(300, 300) == 300 and bucket_width(290, 300) == 300
    assert bucket_width(600, 1024) == 640  # past 512: 64-token steps


def test_bucketed_batches_give_the_same_scores(tokenizer):
    """Bucketing only adds masked padding and splits batches: each pair keeps its own result."""
    tok, pad = tokenizer
    rng = random.Random(fresh_seed("buckets"))
    words = vocabulary()
    queries = [random_text(rng, words, 1, 12) for _ in range(5)]
    docs = [random_text(rng, words, 0, 150) for _ in range(200)]
    pair_q = np.array([rng.randrange(len(queries)) for _ in range(400)])
    pair_d = np.array([rng.randrange(len(docs)) for _ in range(400)])
    plain, bucketed = RowFingerprint(), RowFingerprint()
    bucketed.shape_buckets = True
    together = BatchRunner(tok, plain, 128, pad, max_batch_tokens=700, max_batch_pairs=9).score_pairs(
        queries, docs, pair_q, pair_d)
    shaped = BatchRunner(tok, bucketed, 128, pad, max_batch_tokens=700, max_batch_pairs=9).score_pairs(
        queries, docs, pair_q, pair_d)
    assert np.array_equal(together, shaped)
    assert len(set(bucketed.calls)) < len(set(plain.calls))
    assert all(width == bucket_width(width, 128) and size in SIZE_BUCKETS for size, width in bucketed.calls)


def test_scatter_returns_each_pair_its_own_result_whatever_the_mix(tokenizer):
    tok, pad = tokenizer
    rng = random.Random(fresh_seed("scatter"))
    words = vocabulary()
    backend = RowFingerprint()
    runner = BatchRunner(tok, backend, 128, pad, max_batch_tokens=700, max_batch_pairs=9)
    queries = [random_text(rng, words, 1, 12) for _ in range(7)]
    docs = [random_text(rng, words, 0, 150) for _ in range(300)]
    pair_q = np.array([rng.randrange(len(queries)) for _ in range(1000)])
    pair_d = np.array([rng.randrange(len(docs)) for _ in range(1000)])
    together = runner.score_pairs(queries, docs, pair_q, pair_d)
    assert len(backend.calls) > 50  # really split into many micro-batches
    alone_runner = BatchRunner(tok, RowFingerprint(), 128, pad, max_batch_tokens=10**6, max_batch_pairs=1)
    zero = np.zeros(1, dtype=np.int64)
    for k in rng.sample(range(1000), 150):
        alone = alone_runner.score_pairs([queries[pair_q[k]]], [docs[pair_d[k]]], zero, zero)
        assert together[k] == alone[0]


def test_long_documents_are_cut_before_tokenizing(tokenizer):
    tok, pad = tokenizer
    runner = BatchRunner(tok, Recorder(), 512, pad, max_batch_tokens=4096, max_batch_pairs=64)
    rng = random.Random(0)
    huge = random_text(rng, vocabulary(), 40_000, 40_000)
    encoded = runner._encode([huge])
    assert encoded.cut == [True]  # the tokenizer only saw the first few kilobytes
    assert len(encoded.ids[0]) == 512


def test_corpus_is_deterministic_english_passages():
    """The benchmark, int8 calibration and load generator all draw from this corpus."""
    passages = load_passages()
    assert len(passages) >= 1000 and len(set(passages)) == len(passages)
    assert all(MIN_WORDS <= len(p.split()) <= MAX_WORDS for p in passages)
    assert load_passages(50) == passages[:50]
    drawn = queries_with_sources(20, seed=3)
    assert drawn == queries_with_sources(20, seed=3) != queries_with_sources(20, seed=4)
    for query, source in drawn:
        assert all(word in passages[source].lower() for word in query.split())
