"""engines.words: texts cut into words in numpy, against the references they stand in for: Python's
``\\w\\w+`` for bm25's words, and the static model's own tokenizer for its pre-tokens (the static
embedding of a plain ASCII text read through its remembered pre-tokens equals the one from its
tokens, bit for bit)."""

from __future__ import annotations

import random
import re
import string

import numpy as np
import pytest
from conftest_engines import fresh_seed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.corpus import load_passages
from engines.first_stage import _WORD, BM25_READ_WORDS, WordAnalyzer, bm25_scores
from engines.models import ModelFolder, packaged_minilm_path
from engines.static_embeddings import StaticEmbeddings, ensure_static_model
from engines.words import BERT_PRE_TOKENS, MAX_KEYED_CHARS, WORDS, SpanVocabulary, is_plain_ascii

#: ASCII with more of what cuts words apart than prose has: punctuation, digits, underscores,
#: control characters and the tokenizer's own special tokens.
_PIECES = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=12),
    st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "-", ".", ",", "'", "(", ")", "[", "]", "__", "...", "\x0b", "\x00",
                     "\x7f", "[SEP]", "[cls]", "[MASK]", "x" * 120, "é", "naïve"]),
    st.characters(min_codepoint=0, max_codepoint=127),
)
_TEXTS = st.lists(st.lists(_PIECES, max_size=40).map("".join), min_size=1, max_size=8)


def words_of(vocabulary: SpanVocabulary, texts, max_chars, max_words=None) -> list[list[str] | None]:
    """Each text's words, None for a text left to the slow path (a word too long to key)."""
    spans = vocabulary.spans(texts, max_chars, max_words)
    out: list[list[str] | None] = [[] for _ in texts]
    for i, owner in enumerate(spans.owner.tolist()):
        out[owner].append(spans.text_of(i))
    for i in spans.long_texts.tolist():
        assert out[i] == []
        out[i] = None
    return out


def regex_words(texts, max_chars, max_words=None) -> list[list[str] | None]:
    words = [_WORD.findall(t[:max_chars].lower())[:max_words] for t in texts]
    return [None if any(len(w) > MAX_KEYED_CHARS for w in ws) else ws for ws in words]


@given(_TEXTS.map(lambda texts: [t for t in texts if t.isascii()] or [""]))
@settings(max_examples=150, deadline=None)
def test_words_are_the_regular_expression_s(texts):
    vocabulary = SpanVocabulary(WORDS, lambda words: range(len(words)), 1000, min_length=2)
    assert words_of(vocabulary, texts, 60, 5) == regex_words(texts, 60, 5)
    assert words_of(vocabulary, texts, 10_000) == regex_words(texts, 10_000)


def test_a_batch_past_the_chunk_size_is_cut_as_one(monkeypatch):
    import engines.words as words

    monkeypatch.setattr(words, "_CHUNK_BYTES", 2000)
    rng = random.Random(fresh_seed("chunks"))
    passages = [p for p in load_passages() if p.isascii()]
    texts = [" ".join(rng.sample(passages, 3)) for _ in range(30)]  # ~1 KB each: many chunks
    vocabulary = SpanVocabulary(WORDS, lambda new: [hash(w) for w in new], 10_000, min_length=2)
    assert words_of(vocabulary, texts, 1500, 100) == regex_words(texts, 1500, 100)
    ids = vocabulary.ids(vocabulary.spans(texts, 1500, 100))
    assert ids.tolist() == [hash(w) for t in texts for w in _WORD.findall(t[:1500].lower())[:100]]


def test_each_word_is_learnt_once_and_forgotten_past_the_bound():
    learnt: list[str] = []
    forgotten = []

    def learn(new):
        learnt.extend(new)
        return [len(w) for w in new]

    vocabulary = SpanVocabulary(WORDS, learn, 6, forget=lambda: forgotten.append(True), min_length=2)
    texts = ["the cat and the hat", "The CAT sat"]
    ids = vocabulary.ids(vocabulary.spans(texts, 100))
    assert ids.tolist() == [3, 3, 3, 3, 3, 3, 3, 3]
    assert sorted(learnt) == ["and", "cat", "hat", "sat", "the"] and forgotten == []
    vocabulary.ids(vocabulary.spans(["cat hat"], 100))
    assert len(learnt) == 5  # known words are not learnt again
    vocabulary.ids(vocabulary.spans(["one two three"], 100))  # 5 + 3 > 6: starts afresh
    assert forgotten == [True] and len(vocabulary) == 3


def test_two_vocabularies_key_words_differently_and_tell_different_words_apart():
    one, two = (SpanVocabulary(WORDS, lambda new: range(len(new)), 10, min_length=2) for _ in range(2))
    assert one.base != two.base  # drawn at random per vocabulary
    spans = one.spans([" ".join(f"w{i}" for i in range(20_000))], 10**6)
    assert len(np.unique(spans.keys)) == 20_000


def thue_morse(n: int, letters: str = "ab") -> str:
    return "".join(letters[bin(i).count("1") & 1] for i in range(n))


def test_words_that_collide_whatever_the_base_are_not_keyed_and_still_counted_apart():
    # A Thue-Morse string and its complement have equal keys modulo 2**64 for any odd base.
    first, second = thue_morse(1024), thue_morse(1024, "ba")
    spans = SpanVocabulary(WORDS, lambda new: range(len(new)), 10, min_length=2).spans([first, "ok", second], 10**6)
    assert spans.long_texts.tolist() == [0, 2] and [spans.text_of(i) for i in range(len(spans.keys))] == ["ok"]
    analyzer = WordAnalyzer()
    flat, lengths = analyzer.analyze([first, "filler doc", second, "other doc words", first + " doc"])
    scores = bm25_scores(flat[: lengths[0]], flat[lengths[0]:], lengths[1:])
    assert scores[1] == 0 and scores[3] > 0  # the complement is another word, the same word again is not
    assert len(analyzer._term_of) == 4  # the long words were not remembered


def test_plain_ascii():
    assert is_plain_ascii("tab\tline\nreturn\r ~")
    assert not any(is_plain_ascii(t) for t in ["café", "a\x00b", "vertical\x0btab", "del\x7f"])


def test_one_analysis_numbers_its_terms_once_even_when_it_starts_afresh(monkeypatch):
    import engines.first_stage as first_stage

    monkeypatch.setattr(first_stage, "ANALYZER_WORDS", 10)
    analyzer = WordAnalyzer()
    analyzer.analyze(["café " + " ".join(f"word{i}" for i in range(9))])
    texts = ["alpha beta gamma", "café alpha beta", "café delta epsilon", "zeta"]
    flat, lengths = analyzer.analyze(texts)
    fresh_flat, fresh_lengths = WordAnalyzer().analyze(texts)
    np.testing.assert_array_equal(bm25_scores(flat[: lengths[0]], flat[lengths[0]:], lengths[1:]),
                                  bm25_scores(fresh_flat[: fresh_lengths[0]], fresh_flat[fresh_lengths[0]:], fresh_lengths[1:]))


def test_the_bm25_analyzer_gives_the_same_scores_whichever_way_it_cuts():
    rng = random.Random(fresh_seed("analyzer paths"))
    passages = load_passages()
    analyzer = WordAnalyzer()
    for _ in range(5):
        texts = ["how to open and read files", *rng.sample(passages, 40), "Ünïcode words café FILES", "files_open x9"]
        flat, lengths = analyzer.analyze(texts)
        scores = bm25_scores(flat[: lengths[0]], flat[lengths[0]:], lengths[1:])
        # The regular expression alone, as before the fast path: stems of the same words.
        words = [[w for w in _WORD.findall(t[: BM25_READ_WORDS * 32].lower())[:BM25_READ_WORDS]] for t in texts]
        terms = {}
        ids = [[terms.setdefault(analyzer._stemmer.stemWord(w), len(terms)) for w in ws if w not in analyzer._stop]
               for ws in words]
        expected = bm25_scores(np.asarray(ids[0], dtype=np.int64), np.asarray([i for x in ids[1:] for i in x], dtype=np.int64),
                               np.asarray([len(x) for x in ids[1:]], dtype=np.int64))
        np.testing.assert_array_equal(scores, expected)


@pytest.fixture(scope="module")
def static_model() -> StaticEmbeddings:
    return StaticEmbeddings(ensure_static_model(), ModelFolder.load(str(packaged_minilm_path())))


@given(_TEXTS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_static_embeddings_from_pre_tokens_are_the_tokenizer_s_bit_for_bit(static_model, texts):
    np.testing.assert_array_equal(static_model.embed_texts(texts), static_model.embed(texts))


def test_static_embeddings_of_long_and_odd_texts_are_the_tokenizer_s(static_model):
    rng = random.Random(fresh_seed("static words"))
    passages = load_passages()
    long_text = " ".join(rng.sample(passages, 12))  # past 512 tokens: cut in the middle of a word's pieces
    texts = [long_text, long_text[: static_model.encoder.clip_chars + 10], *rng.sample(passages, 50),
             "Unbelievably_long_identifiers_like_this_one and x" * 30, "", "   ", "[SEP] in a text", "a\x0bb",
             "x" * 150 + " y", "café"]
    assert static_model.reads_as_words(long_text) and not static_model.reads_as_words("[SEP] in a text")
    assert len(static_model.encoder.encode([long_text]).ids[0]) == static_model.encoder.cap
    np.testing.assert_array_equal(static_model.embed_texts(texts), static_model.embed(texts))
    # Again, with every pre-token known: the same.
    np.testing.assert_array_equal(static_model.embed_texts(texts), static_model.embed(texts))


def test_pre_tokens_are_bert_s():
    vocabulary = SpanVocabulary(BERT_PRE_TOKENS, lambda new: range(len(new)), 100)
    assert words_of(vocabulary, ["Don't stop_me now, (x2)!"], 100) == [
        ["don", "'", "t", "stop", "_", "me", "now", ",", "(", "x2", ")", "!"]]
    assert re.fullmatch(r"[!-/:-@\[-`{-~]+", string.punctuation)  # BERT's ASCII punctuation ranges


def test_behind_a_cross_encoder_reading_fewer_tokens_every_text_reads_as_many(static_model):
    from engines.batching import TextEncoder

    rng = random.Random(fresh_seed("short cache"))
    text = " ".join(rng.sample([p for p in load_passages() if p.isascii()], 12))  # past 512 tokens
    cache = TextEncoder(static_model.encoder.tokenizer, 128).new_cache()
    plain, accented = static_model.embed_texts([text, text + " é"], cache)  # the second through the cache
    np.testing.assert_array_equal(plain, accented)  # both read their first 128 tokens
    assert not np.array_equal(plain, static_model.embed_texts([text])[0])  # alone: 512


def test_no_texts_no_vectors(static_model):
    assert static_model.embed_texts([]).shape == (0, static_model.dim)
