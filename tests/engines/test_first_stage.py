"""The prefilter's first stages (engines.first_stage, engines.static_embeddings) on their own and
through the reranker: each method's scores against an independent computation (bm25s, model2vec),
what is kept and how the rest is ranked, and that a document is tokenized once for both stages."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest_engines import NON_ASCII, fresh_seed, random_text, test_model_path, vocabulary  # noqa: F401

from engines import EngineConfig, JobRefused, RerankJob, build_reranker
from engines.batching import TextEncoder, tokenizer_signature
from engines.corpus import load_passages, queries
from engines.first_stage import (
    BM25_READ_WORDS,
    READ_TOKENS,
    Bm25Stage,
    StageJob,
    WordAnalyzer,
    bm25_scores,
    ranked,
    reciprocal_rank_fusion,
)
from engines.models import ModelFolder, load_fast_tokenizer, packaged_minilm_path
from vocabulary import PREFILTER_METHODS
from engines.static_embeddings import (
    MARKER_KEY,
    StaticEmbeddings,
    StaticStage,
    ensure_static_model,
    expected_marker,
    is_static_model,
)


@pytest.fixture(scope="module")
def static_model_path() -> Path:
    """The real static model (distilled once into the cache: about a minute on two quiet cores)."""
    return ensure_static_model()


@pytest.fixture(scope="module")
def reranker(test_model_path, static_model_path):
    # ONNX fp32: deterministic, so a document's logit does not depend on what shares its batch.
    return build_reranker(EngineConfig(engine="onnx", model=test_model_path, precision="fp32", device="cpu",
                                       prefilter_threshold=30, prefilter_keep=10))


@pytest.fixture(scope="module")
def tokenizer(test_model_path):
    tok, _, _ = load_fast_tokenizer(ModelFolder.load(test_model_path))
    return tok


# -- BM25 and fusion -------------------------------------------------------------------------------

def bm25_of(query, documents) -> np.ndarray:
    """bm25_scores of documents given one id array each."""
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in documents]) if documents else np.zeros(0, np.int64)
    return bm25_scores(np.asarray(query), flat, lengths)


def test_bm25_equals_bm25s_on_token_ids():
    import bm25s

    rng = np.random.default_rng(fresh_seed("bm25"))
    for _ in range(20):
        n = int(rng.integers(1, 60))
        docs = [rng.integers(0, 40, size=int(rng.integers(0, 30))) for _ in range(n)]
        docs[0] = rng.integers(0, 40, size=5)  # at least one non-empty document
        query = rng.integers(0, 45, size=int(rng.integers(1, 8)))  # ids 40-44 occur in no document
        index = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
        index.index([[str(t) for t in d] for d in docs], show_progress=False)
        known = [str(t) for t in query if str(t) in index.vocab_dict]
        expected = index.get_scores(known) if known else np.zeros(n)
        np.testing.assert_allclose(bm25_of(query, docs), expected, rtol=1e-5, atol=1e-6)


def bm25s_on_words(query: str, documents: list[str]) -> np.ndarray:
    """BM25 over words the way a bm25s user computes it: bm25s.tokenize with English stop words and
    PyStemmer's English stemmer, a Lucene-variant index of the documents, scored for the query."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    docs = bm25s.tokenize(documents, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
    index = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    index.index(docs, show_progress=False)
    [words] = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
    known = [w for w in words if w in index.vocab_dict]
    return index.get_scores(known) if known else np.zeros(len(documents))


def test_the_bm25_stage_scores_words_as_bm25s_does_with_stop_words_and_stems():
    rng = random.Random(fresh_seed("bm25 words"))
    passages = [p for p in load_passages() if len(p.split()) >= 8]  # (bm25s counts a wordless one as 1 word)
    stage = Bm25Stage()
    for k in range(10):
        docs = rng.sample(passages, rng.randint(2, 80))
        query = rng.choice([*queries(5, seed=k), "How are the files opened and read?", "THE the a"])
        [ours] = stage.score([StageJob(query, docs)], None)
        np.testing.assert_allclose(ours, bm25s_on_words(query, docs), rtol=1e-5, atol=1e-6)
    # Case, inflection and stop words do not matter; a word's stem does.
    [scores] = stage.score([StageJob("Opening FILES", ["the file was opened", "a socket is closed", "files open"])], None)
    assert scores[0] == scores[2] > scores[1] == 0


def test_the_bm25_stage_reads_the_first_words_of_a_long_document_and_forgets_past_its_bound(monkeypatch):
    rng = random.Random(fresh_seed("bm25 long"))
    words = [w for w in vocabulary() if w.isalpha() and len(w) > 1]  # one word each, as BM25 reads them
    long_doc = " ".join(rng.choice(words) for _ in range(5 * BM25_READ_WORDS))
    head = " ".join(long_doc.split()[:BM25_READ_WORDS])
    docs = [*rng.sample(load_passages(), 10)]
    query = " ".join(rng.sample(words, 4))
    stage = Bm25Stage()
    [whole] = stage.score([StageJob(query, [*docs, long_doc])], None)
    [cut] = stage.score([StageJob(query, [*docs, head])], None)
    np.testing.assert_allclose(whole, cut, rtol=1e-6)
    # A stream of new words never grows the analyzer's memory past its bound; scores stay the same.
    import engines.first_stage as first_stage

    monkeypatch.setattr(first_stage, "ANALYZER_WORDS", 50)
    analyzer = WordAnalyzer()
    for _ in range(3):
        [again] = Bm25Stage(analyzer).score([StageJob(query, [*docs, long_doc])], None)
        np.testing.assert_allclose(again, whole, rtol=1e-6)
    distinct = {w for text in [query, *docs, head] for w in re.findall(r"(?u)\b\w\w+\b", text.lower())}
    assert len(analyzer._term_of) <= 50 + len(distinct)
    [empty] = stage.score([StageJob("", ["", "a b c", "text"])], None)
    np.testing.assert_array_equal(empty, [0.0, 0.0, 0.0])


def test_a_first_stage_runs_alone_through_the_public_call(reranker):
    rng = random.Random(fresh_seed("rank first stage"))
    docs = rng.sample(load_passages(), 40)
    query = queries(1, seed=rng.randrange(1000))[0]
    ranking = reranker.rank_first_stage(query, docs, method="bm25")
    np.testing.assert_allclose(ranking.scores, bm25s_on_words(query, docs), rtol=1e-5, atol=1e-6)
    assert ranking.method == "bm25" and list(ranking.order) == list(ranked(np.arange(40), ranking.scores))
    assert reranker.rank_first_stage(query, docs).method == reranker.config.prefilter_method
    client = reranker.rank_first_stage(query, docs[:3], method="client", scores=[0.5, 2.0, -1.0])
    assert list(client.order) == [1, 0, 2]
    with pytest.raises(JobRefused, match="prefilter method 'client'"):
        reranker.rank_first_stage(query, docs[:3], method="client")


def test_bm25_edge_cases():
    assert bm25_of(np.array([1]), []).shape == (0,)
    np.testing.assert_array_equal(bm25_of(np.array([], dtype=np.int64), [np.array([1, 2])]), [0.0])
    np.testing.assert_array_equal(bm25_of(np.array([1]), [np.array([], dtype=np.int64)] * 3), [0.0, 0.0, 0.0])
    # A document holding the query's rare term beats one holding only its common term.
    scores = bm25_of(np.array([7, 9]), [np.array([7, 1]), np.array([9, 1]), np.array([9, 2])])
    assert scores[0] > scores[1] == scores[2] > 0


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([np.array([3.0, 2.0, 1.0]), np.array([0.0, 5.0, 1.0])], k=60)
    np.testing.assert_allclose(fused, [1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62], rtol=1e-6)
    # Ties are ranked by index, as everywhere else.
    np.testing.assert_allclose(reciprocal_rank_fusion([np.zeros(2)], k=1), [1 / 2, 1 / 3], rtol=1e-6)


def test_methods_are_the_configured_ones():
    assert PREFILTER_METHODS == ("bi-encoder", "static", "bm25", "client", "static+bm25")
    with pytest.raises(ValueError, match="prefilter_method"):
        EngineConfig(prefilter_method="tfidf").validate()


# -- the static model ------------------------------------------------------------------------------

def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_static_model_build_is_cached_marked_and_deterministic(tmp_path):
    # Only tokens starting with q, x or z (and the bracketed special ones): a small vocabulary, so
    # two builds take seconds. The recipe is otherwise the real one.
    pattern = r"(?![qxz\[])"
    first = ensure_static_model(tmp_path / "a", token_remove_pattern=pattern)
    second = ensure_static_model(tmp_path / "b", token_remove_pattern=pattern)
    assert _digest(first) == _digest(second)  # same source, same bytes
    marker = json.loads((first / "config.json").read_text())[MARKER_KEY]
    assert marker == expected_marker(packaged_minilm_path(), pattern)
    assert marker["source_weights_sha256"] == hashlib.sha256((packaged_minilm_path() / "model.safetensors").read_bytes()).hexdigest()
    assert is_static_model(first) and not is_static_model(packaged_minilm_path())

    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_static_model(first, token_remove_pattern=pattern) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # current: not rebuilt
    config = json.loads((first / "config.json").read_text())
    config[MARKER_KEY]["recipe_version"] = -1
    (first / "config.json").write_text(json.dumps(config))
    ensure_static_model(first, token_remove_pattern=pattern)  # stale marker: rebuilt
    assert _digest(first) == _digest(second)

    from model2vec import StaticModel

    vocabulary_size = len(StaticModel.from_pretrained(str(first)).tokens)
    assert 100 < vocabulary_size < 2000


def test_static_embeddings_reproduce_model2vec(static_model_path):
    from model2vec import StaticModel

    rng = random.Random(fresh_seed("static"))
    texts = [*queries(5, seed=rng.randrange(1000)), *rng.sample(load_passages(), 60), *NON_ASCII, "",
             random_text(rng, vocabulary(), 1, 30)]
    ours = StaticEmbeddings(static_model_path, ModelFolder.load(str(packaged_minilm_path()))).embed(texts)
    theirs = StaticModel.from_pretrained(str(static_model_path)).encode(texts).astype(np.float32)
    # model2vec stores float16 vectors and pools in float16; we pool in float32.
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    norms = np.linalg.norm(ours, axis=1)
    np.testing.assert_allclose(norms[[i for i, t in enumerate(texts) if t]], 1.0, atol=1e-5)


# -- through the reranker ----------------------------------------------------------------------------

def _expected_first_stage(reranker, method, query, docs, client_scores, tokenizer):
    """Each method's scores, computed apart from the reranker's code path."""
    if method == "client":
        return np.asarray(client_scores, dtype=np.float32)
    if method == "bi-encoder":
        return reranker.bi_encoder.cosine(query, docs)
    if method == "static":
        vectors = reranker.static_embeddings.embed([query, *docs])
        return vectors[1:] @ vectors[0]
    if method == "bm25":
        return bm25s_on_words(query, docs).astype(np.float32)
    static = _expected_first_stage(reranker, "static", query, docs, client_scores, tokenizer)
    bm25 = _expected_first_stage(reranker, "bm25", query, docs, client_scores, tokenizer)
    return reciprocal_rank_fusion([static, bm25])


@pytest.mark.parametrize("method", PREFILTER_METHODS)
def test_each_method_keeps_its_best_and_ranks_the_rest_by_its_score(reranker, tokenizer, method):
    rng = random.Random(fresh_seed(method))
    docs = rng.sample(load_passages(), 45)
    query = queries(1, seed=rng.randrange(1000))[0]
    client_scores = [rng.uniform(-5, 5) for _ in docs]
    auto, keep5, unfiltered = reranker.rerank([
        RerankJob(query, docs, method=method, scores=client_scores),  # 45 > threshold 30: keep 10
        RerankJob(query, docs[:20], prefilter=True, keep=5, method=method, scores=client_scores[:20]),
        RerankJob(query, docs, prefilter=False, method=method),  # no cut: no scores needed
    ])
    for outcome, n, keep in ((auto, 45, 10), (keep5, 20, 5)):
        first = _expected_first_stage(reranker, method, query, docs[:n], client_scores[:n], tokenizer)
        kept = np.flatnonzero(outcome.cross_encoded)
        assert outcome.prefiltered and outcome.first_stage == method and outcome.score_kind == "logit"
        assert outcome.cross_encoder_scored == keep == len(kept)
        assert outcome.bi_encoder_scored == (n if method == "bi-encoder" else 0)
        by_first = ranked(np.arange(n), first)
        # Near-ties of the first stage may fall either way between two float paths.
        boundary = np.sort(first)[::-1][keep - 1]
        assert set(by_first[:keep]) - set(kept) <= {i for i in range(n) if abs(first[i] - boundary) < 1e-5}
        head = sorted(kept, key=lambda i: (-outcome.scores[i], i))
        tail = [int(i) for i in outcome.order[keep:]]
        assert list(outcome.order[:keep]) == head and sorted(tail) == sorted(set(range(n)) - set(kept))
        # Uncut documents carry their first-stage score, and follow in its order.
        np.testing.assert_allclose(outcome.scores[tail], first[tail], rtol=1e-5, atol=1e-5)
        assert all(outcome.scores[a] >= outcome.scores[b] - 1e-6 for a, b in zip(tail, tail[1:]))
    assert not unfiltered.prefiltered and unfiltered.first_stage is None and unfiltered.cross_encoded.all()
    # A kept document's logit is the one it gets without any prefilter.
    np.testing.assert_allclose(auto.scores[auto.cross_encoded], unfiltered.scores[auto.cross_encoded], atol=1e-4)


@pytest.mark.parametrize("method", ["static", "bm25", "client", "static+bm25"])
def test_keep_zero_returns_the_first_stage_ranking(reranker, method):
    docs = load_passages()[:12]
    [outcome] = reranker.rerank([RerankJob("open a file", docs, prefilter=True, keep=0, method=method,
                                           scores=[float(i % 5) for i in range(12)])])
    assert not outcome.cross_encoded.any() and outcome.score_kind == {"static": "cosine", "bm25": "bm25",
                                                                      "client": "client", "static+bm25": "rrf"}[method]
    assert list(outcome.order) == sorted(range(12), key=lambda i: (-outcome.scores[i], i))


def test_client_method_needs_a_finite_score_on_every_document(reranker):
    docs = ["a", "b", "c", "d"]
    for scores, missing in (([1.0, None, 2.0, None], r"documents\[1\], documents\[3\] have none"),
                            (None, r"documents\[0\], documents\[1\], documents\[2\] and 1 more have none"),
                            ([1.0, 2.0, float("nan"), 0.0], r"documents\[2\] has none")):
        with pytest.raises(JobRefused, match=rf"job 0: prefilter method 'client' .*, but {missing}"):
            reranker.rerank([RerankJob("q", docs, prefilter=True, keep=2, method="client", scores=scores)])
    with pytest.raises(ValueError, match="3 scores for 4 documents"):
        reranker.rerank([RerankJob("q", docs, prefilter=True, keep=2, method="client", scores=[1.0, 2.0, 3.0])])
    # Not cut (keep >= n, or prefilter off): the scores are not read, so none are needed.
    reranker.rerank([RerankJob("q", docs, prefilter=True, keep=4, method="client"),
                     RerankJob("q", docs, prefilter=False, method="client")])
    with pytest.raises(ValueError, match="unknown prefilter method 'tfidf'"):
        reranker.rerank([RerankJob("q", docs, method="tfidf")])


def test_one_window_mixes_methods(reranker):
    rng = random.Random(fresh_seed("mixed"))
    passages = load_passages()
    jobs = [RerankJob(queries(1, seed=k)[0], rng.sample(passages, 40), method=method, keep=7,
                      scores=[rng.random() for _ in range(40)]) for k, method in enumerate([*PREFILTER_METHODS, None])]
    together = reranker.rerank(jobs)
    for job, outcome in zip(jobs, together):
        [alone] = reranker.rerank([job])
        assert outcome.first_stage == (job.method or reranker.config.prefilter_method)
        assert list(outcome.cross_encoded) == list(alone.cross_encoded)
        np.testing.assert_allclose(outcome.scores, alone.scores, atol=1e-4)


class CountingTokenizer:
    """Wraps a Rust tokenizer and records every text it is asked to encode."""

    def __init__(self, inner):
        self.inner = inner
        self.texts: list[str] = []

    def encode_batch_fast(self, texts, add_special_tokens=False):
        self.texts.extend(texts)
        return self.inner.encode_batch_fast(texts, add_special_tokens=add_special_tokens)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_documents_are_tokenized_once_for_both_stages_and_not_far_past_what_is_read(reranker, static_model_path):
    assert reranker._cross.encoder.signature == reranker.static_embeddings.encoder.signature  # both MiniLM WordPiece
    rng = random.Random(fresh_seed("tokenize once"))
    huge = random_text(rng, vocabulary(), 40_000, 40_000)  # ~250 KB
    docs = [*rng.sample(load_passages(), 40), huge]
    static_model = reranker.static_embeddings
    static_model.clear_words()  # so that its tokenizer meets the documents' pre-tokens here
    cross, static = reranker._cross.encoder, static_model.encoder
    counting = CountingTokenizer(cross.tokenizer)
    own = CountingTokenizer(static.tokenizer)
    cross.tokenizer, static.tokenizer = counting, own
    try:
        for method in ("static", "bm25", "static+bm25"):
            counting.texts.clear()
            query = "open a file for reading"
            [outcome] = reranker.rerank([RerankJob(query, docs, method=method, keep=8)])
            assert outcome.prefiltered and outcome.cross_encoder_scored == 8
            # Each text once. bm25 reads words and static reads plain ASCII texts as pre-tokens, so
            # the cross-encoder's tokenizer sees the documents kept, and for static the others it
            # could not cut (here the 250 KB one), which the cross-encoder then finds tokenized.
            static_tokenized = [d for d in docs if "static" in method and not static_model.reads_as_words(d)]
            assert huge in static_tokenized or "static" not in method
            kept = [docs[i] for i in np.flatnonzero(outcome.cross_encoded)]
            read = list(dict.fromkeys([*static_tokenized, *kept]))
            assert sorted(counting.texts) == sorted([query, *(_clip(d, cross.clip_chars) for d in read)])
            assert max(len(t) for t in counting.texts) <= cross.clip_chars  # the 250 KB text is cut first
        # The static stage's own tokenizer saw single pre-tokens only (each learnt once), no text.
        assert own.texts and all(re.fullmatch(r"[a-z0-9]+|[^\sa-z0-9]", t) for t in own.texts)
        assert len(own.texts) == len(set(own.texts))
    finally:
        cross.tokenizer, static.tokenizer = counting.inner, own.inner


def _clip(text: str, limit: int) -> str:
    from engines.batching import _clip_at_space

    return _clip_at_space(text, limit)


def test_static_stage_tokenizes_on_its_own_when_the_cross_encoder_tokenizer_differs(test_model_path, static_model_path,
                                                                                     tmp_path):
    # The test cross-encoder with a tokenizer that keeps accents: another tokenizer, whatever its vocabulary.
    folder = tmp_path / "accented-cross-encoder"
    shutil.copytree(test_model_path, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["normalizer"]["strip_accents"] = False
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["strip_accents"] = False  # transformers would otherwise rebuild the normaliser from here
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    reranker = build_reranker(EngineConfig(engine="torch", model=str(folder), precision="fp32", device="cpu"))
    static = reranker.static_embeddings
    assert reranker._cross.encoder.signature != static.encoder.signature
    assert not reranker.first_stage("static").shares_tokens(reranker._cross.encoder.new_cache())
    rng = random.Random(fresh_seed("own tokenizer"))
    docs = rng.sample(load_passages(), 30) + ["Café résumé naïve"]
    query = "how to read a café's résumé"
    [outcome] = reranker.rerank([RerankJob(query, docs, prefilter=True, keep=6, method="static")])
    vectors = static.embed([query, *docs])
    first = vectors[1:] @ vectors[0]
    tail = [int(i) for i in outcome.order[6:]]
    np.testing.assert_allclose(outcome.scores[tail], first[tail], atol=1e-5)
    assert set(np.flatnonzero(outcome.cross_encoded)) == set(ranked(np.arange(len(docs)), first)[:6].tolist())
    assert static.encoder.cap == READ_TOKENS


def test_behind_a_long_context_cross_encoder_the_static_stage_reads_512_tokens_of_its_own(tokenizer, reranker):
    rng = random.Random(fresh_seed("long context"))
    long_doc = random_text(rng, vocabulary(), 3000, 3000)
    jobs = [StageJob("open a file", [*rng.sample(load_passages(), 20), long_doc])]
    for stage in (StaticStage(reranker.static_embeddings),):
        short, long_ = TextEncoder(tokenizer, 512).new_cache(), TextEncoder(tokenizer, 4096).new_cache()
        np.testing.assert_allclose(stage.score(jobs, long_)[0], stage.score(jobs, short)[0], rtol=1e-6)
        assert long_.entries == {}  # nothing tokenized 4096 tokens deep for a first stage
        assert len(short.entries[long_doc][0]) == READ_TOKENS


def test_tokenizer_signature_ignores_padding_and_truncation_only(tokenizer):
    from tokenizers import Tokenizer

    padded = Tokenizer.from_str(tokenizer.to_str())
    padded.enable_truncation(16)
    padded.enable_padding(length=32)
    assert tokenizer_signature(padded) == tokenizer_signature(tokenizer)
    spec = json.loads(tokenizer.to_str())
    spec["normalizer"]["lowercase"] = not spec["normalizer"]["lowercase"]
    assert tokenizer_signature(Tokenizer.from_str(json.dumps(spec))) != tokenizer_signature(tokenizer)
    assert TextEncoder(tokenizer, 64).new_cache().usable_by(TextEncoder(padded, 32))
    assert not TextEncoder(tokenizer, 32).new_cache().usable_by(TextEncoder(padded, 64))  # it would read more


def test_stats_report_each_first_stage(reranker):
    reranker.reset_stats()
    docs = [*load_passages()[:49], "Café résumé naïve"]  # static tokenizes the one that is not ASCII
    reranker.rerank([RerankJob("q", docs, method="static", keep=5), RerankJob("r", docs, method="bm25", keep=5)])
    stats = reranker.stats()
    assert set(stats["first_stages"]) == {"static", "bm25"}
    assert stats["first_stages"]["static"]["documents"] == 50 and stats["first_stages"]["bm25"]["jobs"] == 1
    assert 0 < stats["first_stage_tokenize_s"] <= sum(s["seconds"] for s in stats["first_stages"].values())
