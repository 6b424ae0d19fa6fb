"""Stand-ins of the reranker families people deploy: tiny random-weight models, built offline.

Each stand-in has the ``config.json`` architecture and the tokenizer type of a real checkpoint
(WordPiece, SentencePiece-style Unigram, byte-level BPE; with or without ``token_type_ids``; the
real position-table and ``model_max_length`` shapes), but 2 layers, hidden size 64 (``--size base``:
12 layers, hidden 768, for throughput figures) and a small vocabulary trained here with ``tokenizers`` on the standard-library passages of
:mod:`engines.corpus`. **They test behaviour and fidelity (does every engine compute what
transformers computes for this architecture?), never relevance: their weights are random.**

The head is the one trained-looking part: it is set along the first principal direction of the
features it reads (over corpus pairs), scaled so that logits spread with a standard deviation of
about 3, as a trained reranker's do. A raw random head gives scores that barely move with the
input, and then any int8 noise looks like a ranking failure.

Usage::

    python -m engines.standins [--out DIR] [NAME ...]    # build (or reuse), print each folder
    python -m engines.check "$(python -m engines.standins --out /tmp/s gte-modernbert)"
    python -m engines.standins --size base minilm      # real base shapes, for pairs/s per family

    from engines.standins import STANDINS, ensure_standin
    folder = ensure_standin("mxbai-rerank")

Folders are cached under ``~/.cache/kafka-rerank/standins/<name>-<key>`` where the key hashes the
recipe and the library versions, so a test session builds each one once and later sessions reuse
it; ``config.json`` carries a ``kafka_rerank_standin`` marker saying what it is.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from engines.config import default_cache_dir
from engines.corpus import load_passages, queries_with_sources
from engines.decoder import QWEN3_RERANKER
from engines.models import ensure_folder, read_marker

#: Bumped whenever a recipe below changes, so old builds are rebuilt rather than reused.
RECIPE_VERSION = 3
MARKER_KEY = "kafka_rerank_standin"
SEED = 20260507
#: Standard deviation of the stand-ins' logits (margins for two-logit heads) over corpus pairs.
LOGIT_SPREAD = 3.0

IDENTITY = "torch.nn.modules.linear.Identity"
SIGMOID = "torch.nn.modules.activation.Sigmoid"

@dataclass(frozen=True)
class StandIn:
    """One stand-in: what it stands for and how it is built."""

    name: str
    stands_for: str
    family: str  # the transformers model_type
    tokenizer: str  # "wordpiece", "unigram" or "bpe"
    notes: str
    options: dict = field(default_factory=dict)

    def key(self, size: str = "tiny") -> str:
        versions = "|".join(_version(p) for p in ("transformers", "tokenizers", "torch"))
        recipe = json.dumps([RECIPE_VERSION, self.name, self.family, self.tokenizer, self.options, versions, size,
                             SIZES[size]], sort_keys=True)
        return hashlib.sha256(recipe.encode()).hexdigest()[:12]


STANDINS: dict[str, StandIn] = {
    s.name: s
    for s in (
        StandIn("minilm", "cross-encoder/ms-marco-MiniLM-L-6-v2", "bert", "wordpiece",
                "BertForSequenceClassification, uncased WordPiece, token_type_ids, 512 positions, Identity activation",
                {"activation": IDENTITY}),
        StandIn("bert-two-logit", "older *-passage-reranking-msmarco BERT models (two labels)", "bert", "wordpiece",
                "BertForSequenceClassification with num_labels=2: ranked by l1 - l0", {"num_labels": 2}),
        StandIn("electra", "cross-encoder/ms-marco-electra-base", "electra", "wordpiece",
                "ElectraForSequenceClassification, embedding size smaller than hidden (projected), uncased WordPiece",
                {"activation": SIGMOID}),
        StandIn("bge-reranker-base", "BAAI/bge-reranker-base", "xlm-roberta", "unigram",
                "XLMRobertaForSequenceClassification, Unigram (SentencePiece-style), no token_type_ids, 514 positions",
                {"positions": 514, "model_max_length": 512}),
        StandIn("bge-reranker-v2-m3", "BAAI/bge-reranker-v2-m3", "xlm-roberta", "unigram",
                "XLMRobertaForSequenceClassification, Unigram, no token_type_ids, 8194 positions (8k tokens)",
                {"positions": 8194, "model_max_length": 8192}),
        StandIn("mxbai-rerank", "mixedbread-ai/mxbai-rerank-base-v1 / -large-v1", "deberta-v2", "unigram",
                "DebertaV2ForSequenceClassification (v3 shape): relative attention, no absolute positions, "
                "Unigram, model_max_length unset (larger than the 512-position table)",
                {"activation": SIGMOID}),
        StandIn("gte-modernbert", "Alibaba-NLP/gte-reranker-modernbert-base", "modernbert", "bpe",
                "ModernBertForSequenceClassification, mean pooling, alternating global / sliding-window (16-token) "
                "attention, byte-level BPE, 8192 positions", {"pooling": "mean"}),
        StandIn("modernbert-cls", "ModernBERT rerankers with CLS pooling", "modernbert", "bpe",
                "ModernBertForSequenceClassification, CLS pooling, sliding-window (16-token) layers",
                {"pooling": "cls"}),
        StandIn("qwen3-reranker", "Qwen/Qwen3-Reranker-0.6B (and 4B, 8B)", "qwen3", "bpe",
                "Qwen3ForCausalLM prompted with the query and document; score = logit('yes') - logit('no') at the "
                "last position; byte-level BPE, left padding", {}),
    )
}


def _version(package: str) -> str:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "-"


def default_standins_dir() -> Path:
    return default_cache_dir() / "standins"


def ensure_standin(name: str, root: str | Path | None = None, size: str = "tiny") -> Path:
    """The folder of stand-in ``name`` (built on first use, then reused; safe across processes).

    ``size``: ``"tiny"`` (2 layers, hidden 64: the tests) or ``"base"`` (12 layers, hidden 768, the
    real families' base shapes and attention windows: what a throughput figure per family needs).
    """
    if name not in STANDINS:
        raise ValueError(f"no stand-in named {name!r}; there are {', '.join(STANDINS)}")
    if size not in SIZES:
        raise ValueError(f"no stand-in size {size!r}; there are {', '.join(SIZES)}")
    spec = STANDINS[name]
    base = Path(root).expanduser().resolve() if root is not None else default_standins_dir()
    out = base / (f"{name}-{spec.key(size)}" if size == "tiny" else f"{name}-{size}-{spec.key(size)}")
    marker = _marker(spec, size)

    def is_current() -> bool:
        return read_marker(out, MARKER_KEY) == marker and (out / "model.safetensors").is_file()

    return ensure_folder(out, is_current, lambda staging: _build(spec, staging, marker, size))


def _marker(spec: StandIn, size: str = "tiny") -> dict:
    return {
        "size": size,
        "stands_for": spec.stands_for,
        "random_weights": True,
        "scores_are_relevance": False,
        "note": "Stand-in built by engines.standins: the real architecture and tokenizer type with 2 layers and random "
                "weights (its head set along the features' first principal direction). For fidelity tests only.",
        "recipe_version": RECIPE_VERSION,
        "key": spec.key(size),
    }


# -- tokenizers ------------------------------------------------------------------------------------
def _training_text() -> list[str]:
    """Corpus passages plus a few lines of digit runs and repeated characters, so that the
    vocabularies hold pieces such as ``99`` and ``9999`` (the cases where Unigram segmentations tie)."""
    rng = random.Random(SEED)
    extra = []
    for _ in range(200):
        digit = rng.choice("0123456789")
        run = digit * rng.randint(2, 12)
        extra.append(f"version {rng.randint(1, 3000)} of {run} items, {rng.choice('ab-=.x')* rng.randint(2, 9)} "
                     f"in {rng.randint(1900, 2100)}")
    return load_passages() + extra


def _wordpiece(vocab_size: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(_training_text(), trainer)
    # Merges of equal count come out in hash-map order; WordPiece matches greedily and ignores ids,
    # so pieces in sorted order (special tokens first) make every build the same.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = specials + sorted(p for p in tok.get_vocab() if p not in specials)
    return {piece: i for i, piece in enumerate(pieces)}


def _unigram(vocab_size: int, specials: list[str], lowercase: bool = False) -> list[tuple[str, float]]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=specials[-1]
                                      if "<unk>" not in specials else "<unk>", shrinking_factor=0.75)
    tok.train_from_iterator(_training_text(), trainer)
    model = json.loads(tok.to_str())["model"]
    # The trainer's sums run in hash-map order, so scores differ in the last bits between runs and
    # equal-score pieces swap places; rounded and sorted, every build is the same.
    pieces = [(piece, round(float(score), 6)) for piece, score in model["vocab"]]
    fixed = [p for p in pieces if p[0] in specials]
    return fixed + sorted((p for p in pieces if p[0] not in specials), key=lambda p: (-p[1], p[0]))


def _byte_bpe(vocab_size: int, specials: list[str], must_have: tuple[str, ...] = ()):
    """Byte-level BPE (GPT-2 / OLMo / Qwen style): returns (vocab, merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    for word in must_have:  # e.g. "yes" / "no" for a decoder reranker: add the merges that make them
        for end in range(2, len(word) + 1):
            piece = word[:end]
            if piece not in vocab:
                merges.append((word[: end - 1], word[end - 1]))
                vocab[piece] = len(vocab)
    # Special tokens after the learned pieces, as in the real ModernBERT / Qwen vocabularies.
    for special in specials:
        vocab.pop(special, None)
    renumbered = {piece: i for i, piece in enumerate(sorted(vocab, key=vocab.get))}
    for special in specials:
        renumbered[special] = len(renumbered)
    return renumbered, [list(m) for m in merges]


def _hf_tokenizer(spec: StandIn):
    """The transformers tokenizer object of ``spec`` (saved with ``save_pretrained``)."""
    from tokenizers import AddedToken
    from transformers import (BertTokenizer, DebertaV2Tokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer,
                              XLMRobertaTokenizer)

    if spec.tokenizer == "wordpiece":
        return BertTokenizer(vocab=_wordpiece(2000), do_lower_case=True, model_max_length=512)
    if spec.family == "xlm-roberta":
        pieces = _unigram(2000, ["<s>", "<pad>", "</s>", "<unk>"])
        pieces.append(("<mask>", 0.0))
        return XLMRobertaTokenizer(vocab=pieces, model_max_length=spec.options["model_max_length"])
    if spec.family == "deberta-v2":
        pieces = _unigram(2000, ["[PAD]", "[CLS]", "[SEP]", "[UNK]"])
        pieces.append(("[MASK]", 0.0))
        # No model_max_length, as mxbai-rerank ships: transformers then reports its "no limit" sentinel.
        return DebertaV2Tokenizer(vocab=pieces, do_lower_case=False, split_by_punct=False)
    if spec.family == "modernbert":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

        specials = ["|||IP_ADDRESS|||", "<|padding|>", "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
        vocab, merges = _byte_bpe(2000, specials)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in merges]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
        tok.decoder = decoders.ByteLevel()
        cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
            mask_token="[MASK]", model_max_length=8192, model_input_names=["input_ids", "attention_mask"])
    if spec.family == "qwen3":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
        vocab, merges = _byte_bpe(2000, specials, must_have=("yes", "no"))
        tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m) for m in merges], model_max_length=131072,
                                   padding_side="left", pad_token="<|endoftext|>", eos_token="<|im_end|>")
        # As in Qwen's tokenizer: the chat markers are special added tokens, <think> tags plain added ones.
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")],
                             special_tokens=True)
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
        return tokenizer
    raise ValueError(f"no tokenizer recipe for {spec.name}")


# -- models ----------------------------------------------------------------------------------------
#: Model shapes. ``tiny`` for tests (its initializer range is wider than transformers' 0.02, so
#: attention is sharp enough at hidden size 64 for masks and windows to matter); ``base`` has the
#: real base models' shapes, local window and position buckets, for throughput figures.
SIZES = {
    "tiny": dict(layers=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
                 init=0.1, electra_embedding=32, qwen_kv_heads=2, head_dim=16, local_attention=16, position_buckets=32),
    "base": dict(layers=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                 init=0.02, electra_embedding=768, qwen_kv_heads=4, head_dim=64, local_attention=128,
                 position_buckets=256),
}


def _config(spec: StandIn, tokenizer, size: str = "tiny"):
    from transformers import BertConfig, DebertaV2Config, ElectraConfig, ModernBertConfig, Qwen3Config, XLMRobertaConfig

    vocab_size = len(tokenizer)
    shape = SIZES[size]
    layers = shape["layers"]
    common = dict(vocab_size=vocab_size, initializer_range=shape["init"], pad_token_id=tokenizer.pad_token_id)
    labels = spec.options.get("num_labels", 1)
    if spec.family == "bert":
        config = BertConfig(**layers, **common, max_position_embeddings=512, type_vocab_size=2)
    elif spec.family == "electra":
        config = ElectraConfig(**layers, **common, embedding_size=shape["electra_embedding"], max_position_embeddings=512, type_vocab_size=2)
    elif spec.family == "xlm-roberta":
        config = XLMRobertaConfig(**layers, **common, max_position_embeddings=spec.options["positions"], type_vocab_size=1,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    elif spec.family == "deberta-v2":
        config = DebertaV2Config(**layers, **common, max_position_embeddings=512, type_vocab_size=0,
                                 relative_attention=True, position_buckets=shape["position_buckets"], max_relative_positions=-1,
                                 pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm",
                                 share_att_key=True, hidden_act="gelu")
    elif spec.family == "modernbert":
        config = ModernBertConfig(**layers, **common, max_position_embeddings=8192, local_attention=shape["local_attention"],
                                  global_attn_every_n_layers=2, classifier_pooling=spec.options["pooling"],
                                  cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                                  bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    elif spec.family == "qwen3":
        config = Qwen3Config(**layers, **common, num_key_value_heads=shape["qwen_kv_heads"], head_dim=shape["head_dim"], max_position_embeddings=8192,
                             tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id)
        config.architectures = ["Qwen3ForCausalLM"]
        return config
    else:
        raise ValueError(f"no model recipe for {spec.name}")
    config.num_labels = labels
    if "activation" in spec.options:
        config.sentence_transformers = {"activation_fn": spec.options["activation"]}
    return config


def spread_pairs(n: int = 256, seed: int = SEED) -> tuple[list[str], list[str]]:
    """Corpus (query, passage) pairs, half drawn with the passage the query came from."""
    passages = load_passages()
    rng = random.Random(seed)
    drawn = queries_with_sources(n, seed=seed)
    queries = [q for q, _ in drawn]
    docs = [passages[i] if k % 2 == 0 else passages[rng.randrange(len(passages))] for k, (_, i) in enumerate(drawn)]
    return queries, docs


def _set_head(model, spec: StandIn, tokenizer) -> None:
    """Point the head along the first principal direction of the features it reads over corpus
    pairs, scaled to a logit spread of :data:`LOGIT_SPREAD` (see the module docstring)."""
    import torch

    queries, docs = spread_pairs()
    if spec.family == "qwen3":
        head = model.lm_head
        texts = [QWEN3_RERANKER.prefix + QWEN3_RERANKER.body(QWEN3_RERANKER.head(q), d) + QWEN3_RERANKER.suffix for q, d in zip(queries, docs)]
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt",
                          add_special_tokens=False)
    else:
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels][-1]
        batch = tokenizer(queries, docs, padding=True, truncation=True, max_length=256, return_tensors="pt")
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")
                 and (k != "token_type_ids" or getattr(model.config, "type_vocab_size", 0) > 1)}
    seen = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(**batch)
    hook.remove()
    features = seen[0]
    if features.dim() == 3:  # a causal LM: the last position (left padding puts the real last token there)
        features = features[:, -1]
    features = features.double()
    centre = features.mean(0)
    _, _, vt = torch.linalg.svd(features - centre, full_matrices=False)
    first, second = vt[0], vt[1]
    scale = LOGIT_SPREAD / float(((features - centre) @ first).std())
    direction = first * scale
    side = second * scale * 0.5  # moves both logits of a two-logit head together; their margin ignores it
    with torch.no_grad():
        if spec.family == "qwen3":
            yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
            head.weight[yes] = (direction / 2 + side).to(head.weight.dtype)
            head.weight[no] = (-direction / 2 + side).to(head.weight.dtype)
            return
        offset = -float(centre @ direction)
        if head.out_features == 1:
            head.weight[0] = direction.to(head.weight.dtype)
            head.bias[0] = offset
        else:
            head.weight[0] = (-direction / 2 + side).to(head.weight.dtype)
            head.weight[1] = (direction / 2 + side).to(head.weight.dtype)
            head.bias[0], head.bias[1] = -offset / 2, offset / 2


def _build(spec: StandIn, out: Path, marker: dict, size: str = "tiny") -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tokenizer = _hf_tokenizer(spec)
    config = _config(spec, tokenizer, size)
    torch.manual_seed(SEED)
    if spec.family == "qwen3":
        model = AutoModelForCausalLM.from_config(config).eval()
    else:
        model = AutoModelForSequenceClassification.from_config(config).eval()
    _set_head(model, spec, tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    written = json.loads((out / "config.json").read_text())
    written[MARKER_KEY] = marker
    written.pop("transformers_version", None)
    (out / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(
        f"# stand-in `{spec.name}`: random weights, scores are NOT relevance\n\n"
        f"Stands for `{spec.stands_for}`: {spec.notes}.\n\nBuilt by `python -m engines.standins` (recipe "
        f"{RECIPE_VERSION}) for fidelity tests of the kafka-rerank engines: {SIZES[size]['layers']['num_hidden_layers']} "
        f"layers, hidden size {SIZES[size]['layers']['hidden_size']}, a vocabulary "
        "trained on standard-library docstrings, random weights, and a head set along the first principal "
        "direction of its input features so that scores spread.\n")


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help="``python -m engines.standins [--out DIR] [NAME ...]``: build (or reuse) stand-ins, print their "
                    f"folders.\n\nNAMES: stand-ins to build (default all): {', '.join(STANDINS)}.")
@click.argument("names", nargs=-1)
@click.option("--out", help="parent folder (default ~/.cache/kafka-rerank/standins)")
@click.option("--size", type=click.Choice(list(SIZES)), default="tiny", show_default=True,
              help="tiny: 2 layers, hidden 64 (tests); base: 12 layers, hidden 768 (throughput figures)")
@click.option("--list", "list_them", is_flag=True, help="list the stand-ins and what they stand for")
def main(names: tuple[str, ...], out: str | None, size: str, list_them: bool) -> None:
    if list_them:
        for spec in STANDINS.values():
            click.echo(f"{spec.name:20s} {spec.stands_for}: {spec.notes}")
        return
    for name in names or list(STANDINS):
        click.echo(ensure_standin(name, out, size))


if __name__ == "__main__":
    main()
