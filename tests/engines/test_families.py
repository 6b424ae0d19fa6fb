"""Every reranker family through every CPU engine, against the checkpoint's own transformers forward.

The models are the stand-ins of :mod:`engines.standins`: the real config.json architecture and
tokenizer type of each family (BERT/MiniLM and ELECTRA WordPiece, XLM-RoBERTa 514 and 8k positions
and DeBERTa-v3 Unigram, ModernBERT byte-level BPE with a 16-token sliding window, a two-logit BERT
head, a Qwen3 decoder reranker) with 2 layers and **random weights**: they test that each engine
computes what transformers computes for the architecture (and that tokenization, heads and
activations follow the model), not relevance. Each is built once and then reused from the cache
(keyed by its recipe and the library versions); exports are cached the same way.

fp32 must be within 1e-3 of transformers' scores; int8 and bf16 must correlate at 0.99 or better
on corpus pairs (the stand-ins' heads are set so scores spread as a trained head's do), and keep
edge documents (empty, whitespace, digit runs, repeated characters, 12k words) in place
(engines.fidelity).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest_engines import NON_ASCII, fresh_seed, random_text, vocabulary  # noqa: F401
import engines.export as export
import engines.families as families
import engines.openvino_engine as openvino_engine
from engines import EngineConfig, build_reranker
from engines.batching import BatchRunner
from engines.check import chunk_texts, chunked_agrees, chunked_score
from engines.check import main as check_main
from engines.decoder import DecoderBatchRunner, reference_decoder_inputs
from engines.export import probe_length
from engines.families import IDENTITY, MARGIN, SIGMOID, YES_NO, activate, inspect_reranker
from engines.fidelity import (EDGE_DOCUMENTS, EngineRefused, check_pairs, compare, model_max_length,
                              reference_scores, verify_engine)
from engines.models import ModelFolder, load_fast_tokenizer
from engines.standins import STANDINS, ensure_standin

ENCODERS = [name for name, spec in STANDINS.items() if spec.family != "qwen3"]
CPU_ENGINES = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8"),
               ("openvino", "fp32"), ("openvino", "int8")]
N_CORPUS = 48


@pytest.fixture(scope="session")
def standin():
    """``standin(name)``: the folder of a stand-in, built on first use (then from the cache)."""
    built = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = str(ensure_standin(name))
        return built[name]

    return get


@pytest.fixture(scope="module")
def reference():
    """``reference(path)``: the check pairs of a model and transformers' scores of them, once per model."""
    cache = {}

    def get(path: str):
        if path not in cache:
            folder = ModelFolder.load(path)
            kind = inspect_reranker(folder)
            length = model_max_length(folder, kind)
            queries, documents = check_pairs(N_CORPUS, long_words=3 * length)
            # The long document's chunks, as engines cut them, are pairs of the check too.
            long_query, long_document = queries[-2], documents[-2]
            chunks = chunk_texts(folder, kind, length, long_query, long_document)
            queries, documents = queries + [long_query] * len(chunks), documents + chunks
            cache[path] = (queries, documents, reference_scores(folder, queries, documents, length, kind=kind),
                           (long_query, long_document, len(chunks)))
        return cache[path]

    return get


class _Recorder:
    """A backend that keeps the unpadded rows it is given (ids, types) and answers each row with
    its number, so that the caller finds which pair each row was."""

    runtime, device, precision = "record", "cpu", "fp32"

    def __init__(self):
        self.rows = []

    def run(self, input_ids, attention_mask, token_type_ids):
        first = len(self.rows)
        for r in range(len(input_ids)):
            keep = attention_mask[r] == 1
            self.rows.append((input_ids[r][keep].tolist(), token_type_ids[r][keep].tolist()))
        return np.arange(first, len(self.rows), dtype=np.float32)


def _assembled(runner_class, path: str, queries, documents, max_length: int):
    """Token ids (and type ids) of each pair as the engines assemble them, all pairs in one call."""
    folder = ModelFolder.load(path)
    tokenizer, _, pad_id = load_fast_tokenizer(folder)
    recorder = _Recorder()
    runner = runner_class(tokenizer, recorder, max_length, pad_id, max_batch_tokens=10**9, max_batch_pairs=64,
                          overlap=False)
    index = np.arange(len(queries))
    numbers = runner.score_pairs([runner.pair_query(q) for q in queries], documents, index, index)
    return [recorder.rows[int(n)] for n in numbers]


def _tokenization_cases(rng_seed: int):
    import random

    from engines.corpus import load_passages

    rng = random.Random(rng_seed)
    words = vocabulary()
    passages = load_passages()
    documents = passages + EDGE_DOCUMENTS + NON_ASCII + [
        "9" * 57, "99 999 9999 99999 999999", "1" * 8 + "2" * 8, "x" * 3000, "ab" * 400, "\t tab\nnew  line ",
        random_text(rng, words, 3000, 3000),  # far past every model's length
    ]
    queries = [rng.choice(["", "what is a frozenset", random_text(rng, words, 1, 12), random_text(rng, words, 400, 400)])
               for _ in documents]
    return queries, documents


@pytest.mark.parametrize("name", ENCODERS)
def test_pair_token_ids_equal_autotokenizer(standin, name):
    """The engines' token ids (and type ids) of every corpus passage and edge case, paired with
    assorted queries, equal the model's own AutoTokenizer's, at the model's length and at 64."""
    from transformers import AutoTokenizer

    path = standin(name)
    folder = ModelFolder.load(path)
    kind = inspect_reranker(folder)
    hf = AutoTokenizer.from_pretrained(path)
    queries, documents = _tokenization_cases(fresh_seed(f"{name} token ids"))
    for length in (model_max_length(folder, kind), 64):
        if length == 64:  # truncation of nearly every pair: a quarter of the passages and every edge case
            keep = list(range(0, len(queries) - 20, 4)) + list(range(len(queries) - 20, len(queries)))
            queries, documents = [queries[i] for i in keep], [documents[i] for i in keep]
        expected = hf(queries, documents, truncation="longest_first", max_length=length)
        got = _assembled(BatchRunner, path, queries, documents, length)
        for k, (ids, types) in enumerate(got):
            assert ids == expected["input_ids"][k], f"{name} at {length}: pair {k} {documents[k][:40]!r}"
            if kind.token_types:
                assert types == expected["token_type_ids"][k], f"{name}: type ids of pair {k}"


def test_truncation_lengths_follow_each_model(standin):
    """model_max_length larger than the position table (DeBERTa ships none: 512), the RoBERTa
    offset (514 positions: 512) and an 8k table (8194: 8192)."""
    expected = {"mxbai-rerank": 512, "bge-reranker-base": 512, "bge-reranker-v2-m3": 8192, "minilm": 512,
                "gte-modernbert": 8192, "qwen3-reranker": 8192}
    for name, length in expected.items():
        folder = ModelFolder.load(standin(name))
        assert model_max_length(folder, inspect_reranker(folder)) == length, name


def test_decoder_prompt_token_ids_equal_the_model_cards(standin):
    from transformers import AutoTokenizer

    path = standin("qwen3-reranker")
    hf = AutoTokenizer.from_pretrained(path)
    queries, documents = _tokenization_cases(fresh_seed("decoder prompt ids"))
    for length in (8192, 120):
        expected = reference_decoder_inputs(hf, queries, documents, length)
        got = _assembled(DecoderBatchRunner, path, queries, documents, length)
        assert [ids for ids, _ in got] == expected


def test_a_jobs_instruction_goes_into_the_decoders_prompt_as_the_model_card_puts_it(standin):
    from transformers import AutoTokenizer

    from engines.decoder import DecoderPrompt

    path = standin("qwen3-reranker")
    hf = AutoTokenizer.from_pretrained(path)
    instruction = "Given a question about Kafka, find the passage that answers it"
    queries, documents = ["what is a partition", ""], ["A partition is an ordered log.", "x " * 300]
    expected = reference_decoder_inputs(hf, queries, documents, 120, prompt=DecoderPrompt(instruction=instruction))
    folder = ModelFolder.load(path)
    tokenizer, _, pad_id = load_fast_tokenizer(folder)
    recorder = _Recorder()
    runner = DecoderBatchRunner(tokenizer, recorder, 120, pad_id, max_batch_tokens=10**9, max_batch_pairs=64,
                                overlap=False)
    index = np.arange(len(queries))
    numbers = runner.score_pairs([runner.pair_query(q, instruction) for q in queries], documents, index, index)
    assert [recorder.rows[int(n)][0] for n in numbers] == expected
    assert runner.pair_query("q") == runner.pair_query("q", DecoderPrompt().instruction)


def test_a_decoder_reads_a_long_document_in_chunks_that_fit_its_prompt(standin):
    from engines import RerankJob

    path = standin("qwen3-reranker")
    reranker = build_reranker(EngineConfig(engine="torch", model=path, precision="fp32", device="cpu",
                                           max_length=200))
    query, text = "what is a partition", " ".join(["Kafka keeps an ordered log of records per partition."] * 40)
    (outcome,) = reranker.rerank([RerankJob(query, [text], max_chunks=3, instruction="Judge the passage",
                                            raw_scores=True)])
    best = outcome.best_chunks[0]
    assert best.chunks == 3 and outcome.pairs_scored == 3
    runner = reranker.cross_encoder
    head = runner.pair_query(query, "Judge the passage")
    (alone,) = reranker.rerank([RerankJob(query, [text[best.start:best.end]], instruction="Judge the passage",
                                          raw_scores=True)])
    assert alone.scores[0] == pytest.approx(outcome.scores[0], abs=1e-4)
    ids = runner.tokenizer.encode(runner.prompt.body(head, text[best.start:best.end]), add_special_tokens=False).ids
    assert len(ids) <= runner.body_budget, "the chunk is read whole"


@pytest.mark.parametrize("engine,precision", CPU_ENGINES, ids=[f"{e}-{p}" for e, p in CPU_ENGINES])
@pytest.mark.parametrize("name", list(STANDINS))
def test_engine_scores_equal_transformers(standin, reference, name, engine, precision):
    path = standin(name)
    kind = inspect_reranker(ModelFolder.load(path))
    config = EngineConfig(engine=engine, model=path, precision=precision, device="cpu")
    if kind.decoder and engine != "torch":
        with pytest.raises(EngineRefused, match="use engine=torch instead"):
            build_reranker(config, verify=False)
        return
    reranker = build_reranker(config, verify=False)
    assert reranker.engine_name == f"{engine}-{precision}"
    queries, documents, want, (long_query, long_document, chunks) = reference(path)
    outcomes = reranker.rerank([_job(q, d) for q, d in zip(queries, documents)])
    got = np.array([o.scores[0] for o in outcomes])
    fidelity = compare(got, want, precision, N_CORPUS)
    assert fidelity.ok, f"{name} on {engine}-{precision}: {fidelity.describe()}"
    # The long document read in chunks takes its best chunk's score.
    assert chunks > 1
    chunked = chunked_score(reranker, long_query, long_document)
    assert chunked_agrees(chunked, float(got[-chunks:].max()), fidelity), (chunked, got[-chunks:])


def _job(query, document):
    from engines import RerankJob

    return RerankJob(query, [document], prefilter=False)


@pytest.mark.parametrize("name", ENCODERS)
def test_relevance_equals_sentence_transformers_predict(standin, name):
    """relevance = the model's activation of its score, as CrossEncoder.predict gives it; a
    two-logit head ranks by l1 - l0 and its relevance is the softmax probability of label 1."""
    from sentence_transformers import CrossEncoder

    path = standin(name)
    reranker = build_reranker(EngineConfig(engine="torch", model=path, precision="fp32", device="cpu"))
    queries, documents = check_pairs(16, long_words=10)
    outcomes = reranker.rerank([_job(q, d) for q, d in zip(queries, documents)])
    relevance = np.array([activate(o.activation, o.scores)[0] for o in outcomes])
    model = CrossEncoder(path, device="cpu")
    predicted = model.predict(list(zip(queries, documents)), show_progress_bar=False)
    if reranker.kind.head == MARGIN:
        assert predicted.shape == (len(queries), 2)
        predicted = torch.softmax(torch.from_numpy(predicted), dim=1)[:, 1].numpy()
    expected_activation = {"Identity": IDENTITY, "Sigmoid": SIGMOID}[type(model.activation_fn).__name__]
    if reranker.kind.head != MARGIN:
        assert reranker.activation == expected_activation
    np.testing.assert_allclose(relevance, predicted, atol=1e-4, rtol=0)


def test_heads_and_activations_read_from_config(standin):
    kinds = {name: inspect_reranker(ModelFolder.load(standin(name))) for name in STANDINS}
    assert kinds["minilm"].activation == IDENTITY and kinds["electra"].activation == SIGMOID
    assert kinds["bge-reranker-base"].activation == SIGMOID  # no sentence-transformers block: the default
    assert kinds["bert-two-logit"].head == MARGIN
    assert kinds["qwen3-reranker"].head == YES_NO and kinds["qwen3-reranker"].activation == SIGMOID
    assert kinds["gte-modernbert"].local_window == 16 and kinds["minilm"].local_window is None
    assert [n for n, k in kinds.items() if k.additive_mask] == ["minilm", "bert-two-logit", "electra",
                                                               "bge-reranker-base", "bge-reranker-v2-m3"]
    assert not kinds["bge-reranker-v2-m3"].token_types and kinds["minilm"].token_types


def _variant(tmp_path, path: str, name: str, **config_changes) -> str:
    out = tmp_path / name
    shutil.copytree(path, out)
    config = json.loads((out / "config.json").read_text())
    config.update(config_changes)
    (out / "config.json").write_text(json.dumps(config))
    return str(out)


def test_models_that_are_not_rerankers_are_refused_by_name(standin, tmp_path):
    path = standin("minilm")
    three = _variant(tmp_path, path, "three", id2label={"0": "bad", "1": "ok", "2": "good"},
                     label2id={"bad": 0, "ok": 1, "good": 2})
    with pytest.raises(ValueError, match=r"3 labels \(bad, ok, good\)"):
        build_reranker(EngineConfig(engine="torch", model=three, device="cpu"))
    encoder = _variant(tmp_path, path, "encoder", architectures=["BertModel"])
    with pytest.raises(ValueError, match="is a BertModel, not a reranker"):
        build_reranker(EngineConfig(engine="onnx", model=encoder, device="cpu"))
    odd = _variant(tmp_path, path, "odd", sentence_transformers={"activation_fn": "torch.nn.modules.activation.ReLU"})
    with pytest.raises(ValueError, match="ReLU"):
        build_reranker(EngineConfig(engine="torch", model=odd, device="cpu"))


def test_export_probe_is_longer_than_the_sliding_window_and_catches_a_global_mask(standin, tmp_path, monkeypatch):
    """A ready-made 4-D mask turns ModernBERT's sliding-window layers global: scores go wrong past
    the window only, so the export check must probe past it, with padding, and refuse."""
    path = standin("modernbert-cls")
    folder = ModelFolder.load(path)
    kind = inspect_reranker(folder)
    assert probe_length(folder, kind) > 2 * kind.local_window
    monkeypatch.setattr(families, "ADDITIVE_MASK_TYPES", families.ADDITIVE_MASK_TYPES | {"modernbert"})
    with pytest.raises(RuntimeError, match="does not reproduce the transformers forward pass"):
        build_reranker(EngineConfig(engine="onnx", model=path, precision="fp32", device="cpu",
                                    cache_dir=str(tmp_path)), verify=False)


def _global_mask_export(monkeypatch):
    """Reproduce the old ModernBERT failure: its export handed a ready-made 4-D mask (sliding-window
    layers turned global) and checked itself on a probe too short to notice."""
    monkeypatch.setattr(families, "ADDITIVE_MASK_TYPES", families.ADDITIVE_MASK_TYPES | {"modernbert"})
    monkeypatch.setattr(export, "_check_against", lambda *args, **kwargs: None)


def test_startup_check_refuses_an_engine_that_serves_wrong_scores(standin, tmp_path, monkeypatch):
    """Should an export ever pass its own check and still be wrong (as ModernBERT's was), the
    worker's start-up check sees it on real pairs and refuses, naming the engine to use instead."""
    _global_mask_export(monkeypatch)
    with pytest.raises(EngineRefused, match=r"max \|Δ\| .*use engine=torch, precision=fp32 instead"):
        build_reranker(EngineConfig(engine="onnx", model=standin("modernbert-cls"), precision="fp32", device="cpu",
                                    cache_dir=str(tmp_path)))


def test_startup_check_passes_once_and_is_remembered(standin, tmp_path):
    path = standin("bge-reranker-base")
    config = EngineConfig(engine="onnx", model=path, precision="int8", device="cpu", cache_dir=str(tmp_path))
    build_reranker(config)
    verdicts = list((tmp_path / "verified").glob("*.json"))
    assert len(verdicts) == 1 and "onnx-int8" in verdicts[0].read_text()
    reranker = build_reranker(config)  # remembered: no second comparison
    folder = ModelFolder.load(path)
    assert verify_engine(reranker._cross, reranker.engine_name, folder, reranker.kind, tmp_path, "x") is None


def test_decoder_scores_do_not_depend_on_left_padding(standin):
    path = standin("qwen3-reranker")
    reranker = build_reranker(EngineConfig(engine="torch", model=path, precision="fp32", device="cpu",
                                           max_batch_pairs=8))
    queries, documents = check_pairs(6, long_words=600)
    together = reranker.rerank([_job(q, d) for q, d in zip(queries, documents)])
    for (q, d), outcome in zip(zip(queries, documents), together):
        [alone] = reranker.rerank([_job(q, d)])
        np.testing.assert_allclose(alone.scores, outcome.scores, atol=1e-4, rtol=0)


def test_check_command_prints_a_table_and_fails_on_wrong_scores(standin, monkeypatch, tmp_path):
    def check(*args: str):
        return CliRunner().invoke(check_main, [*args, "--cache-dir", str(tmp_path)])

    done = check(standin("electra"), "--engine", "onnx-fp32", "--engine", "torch-bf16", "--pairs", "24")
    assert done.exit_code == 0, done.output
    assert "ElectraForSequenceClassification" in done.output and "onnx-fp32" in done.output
    assert "torch-bf16" in done.output
    # An engine that builds but serves wrong scores: the command says so and exits 1.
    _global_mask_export(monkeypatch)
    done = check(standin("modernbert-cls"), "--engine", "openvino-fp32", "--pairs", "8")
    assert done.exit_code == 1 and "WRONG SCORES" in done.output, done.output
    # An engine that cannot run the model at all (a decoder on ONNX) is listed as refused.
    done = check(standin("qwen3-reranker"), "--engine", "onnx-fp32", "--engine", "torch-fp32", "--pairs", "8")
    assert done.exit_code == 0 and "refused" in done.output, done.output


def test_a_position_table_smaller_than_model_max_length_truncates_at_the_table(standin, tmp_path):
    """A 128-position BERT whose tokenizer says 512: every engine reads at most 128 tokens."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(standin("minilm"))
    with torch.no_grad():
        table = model.bert.embeddings.position_embeddings
        small = torch.nn.Embedding(128, table.embedding_dim)
        small.weight.copy_(table.weight[:128])
        model.bert.embeddings.position_embeddings = small
        model.bert.embeddings.register_buffer("position_ids", torch.arange(128).expand((1, -1)), persistent=False)
    model.config.max_position_embeddings = 128
    out = tmp_path / "bert-128"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(standin("minilm")).save_pretrained(out)
    folder = ModelFolder.load(str(out))
    kind = inspect_reranker(folder)
    assert model_max_length(folder, kind) == 128
    queries, documents = check_pairs(12, long_words=400)
    want = reference_scores(folder, queries, documents, 128, kind=kind)
    for engine in ("onnx", "openvino"):
        reranker = build_reranker(EngineConfig(engine=engine, model=str(out), precision="fp32", device="cpu",
                                               cache_dir=str(tmp_path / "cache")), verify=False)
        got = np.array([o.scores[0] for o in reranker.rerank([_job(q, d) for q, d in zip(queries, documents)])])
        assert compare(got, want, "fp32", 12).ok, engine
