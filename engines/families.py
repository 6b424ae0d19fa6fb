"""What kind of reranker a model folder holds, and how each engine must run it to be exact.

Read from ``config.json`` (through transformers' ``AutoConfig``, so old and new config spellings
agree) before anything is loaded:

* **Head.** A ``*ForSequenceClassification`` with one label scores a pair by its logit; with two
  labels by the margin ``l1 - l0`` (whose sigmoid is the softmax probability of label 1), as
  sentence-transformers ranks them. A ``*ForCausalLM`` whose tokenizer has ``yes`` and ``no``
  tokens is a decoder reranker (Qwen3-Reranker style: :mod:`engines.decoder`). Anything else, or
  more labels, is refused here with a message that names what was found.
* **Activation.** What sentence-transformers' ``CrossEncoder.predict`` applies to that score: the
  ``sentence_transformers.activation_fn`` of ``config.json`` (or the older
  ``sbert_ce_default_activation_function``), else Sigmoid for one score. ``relevance_score`` applies it.
* **Mask form.** Every ``*ForSequenceClassification`` accepts a 2-D 0/1 attention mask and builds
  what it needs from it (DeBERTa-v2 multiplies embeddings by it; ModernBERT derives its
  sliding-window masks from it). The exported graph of the families in :data:`ADDITIVE_MASK_TYPES`
  takes a ready-made additive 4-D mask instead, which keeps transformers' mask code out of the
  traced graph; that form is used only where tests prove it equal to the 2-D forward.
* **Local attention.** The widest sliding window of the model, which the export check's probe
  must exceed (a window only matters for sequences longer than it).
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.models import ModelFolder

#: Families whose export takes an additive 4-D mask; proven equal to the 2-D forward by
#: tests/engines/test_families.py. Every other family is exported with the 2-D 0/1 mask.
ADDITIVE_MASK_TYPES = frozenset({"bert", "electra", "xlm-roberta", "roberta", "camembert"})

SIGMOID, IDENTITY, TANH = "sigmoid", "identity", "tanh"
#: sentence-transformers activation class names -> what :func:`activate` applies.
_ACTIVATIONS = {"Sigmoid": SIGMOID, "Identity": IDENTITY, "Tanh": TANH}

LOGIT, MARGIN, YES_NO = "logit", "margin", "yes-no"


@dataclass(frozen=True)
class RerankerKind:
    """How a model folder scores a (query, document) pair.

    Attributes:
        model_type: transformers' ``model_type`` (``bert``, ``deberta-v2``, ``modernbert``, ``qwen3``...).
        architecture: the class named in ``config.json``, e.g. ``DebertaV2ForSequenceClassification``.
        head: ``"logit"`` (one label), ``"margin"`` (two labels: l1 - l0) or ``"yes-no"`` (a
            decoder: logit('yes') - logit('no') at the last position).
        activation: what turns the score into ``relevance_score``: ``"sigmoid"``, ``"identity"`` or ``"tanh"``.
        additive_mask: the exported graph takes an additive 4-D mask (else the 2-D 0/1 mask).
        local_window: tokens one sliding-window layer sees (the whole window), or None.
        token_types: the model reads ``token_type_ids`` (a type vocabulary of more than one).
    """

    model_type: str
    architecture: str
    head: str
    activation: str
    additive_mask: bool
    local_window: int | None
    token_types: bool

    @property
    def decoder(self) -> bool:
        return self.head == YES_NO


def _activation(config, folder: ModelFolder, head: str) -> str:
    block = getattr(config, "sentence_transformers", None)
    path = None
    if isinstance(block, dict) and block.get("activation_fn"):
        path = str(block["activation_fn"])
    elif getattr(config, "sbert_ce_default_activation_function", None):
        path = str(config.sbert_ce_default_activation_function)
    if head == MARGIN:
        # sentence-transformers returns both logits for a two-label head; the service ranks by the
        # margin, whose sigmoid is the softmax probability of label 1: that is the relevance.
        return SIGMOID
    if path is None:
        return SIGMOID  # sentence-transformers' default for one score
    name = path.rsplit(".", 1)[-1]
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"model {folder.name!r}: its sentence-transformers activation {path!r} is not one the service applies "
            f"({', '.join('torch.nn.' + k for k in _ACTIVATIONS)})"
        )
    return _ACTIVATIONS[name]


def _local_window(config) -> int | None:
    layer_types = getattr(config, "layer_types", None) or []
    sliding = any("sliding" in str(t) for t in layer_types)
    local = getattr(config, "local_attention", None)  # ModernBERT: the whole window
    if isinstance(local, int) and local > 0 and (sliding or not layer_types):
        return local
    window = getattr(config, "sliding_window", None)  # Mistral/Qwen style: tokens looked back
    if isinstance(window, int) and window > 0 and (sliding or getattr(config, "use_sliding_window", False)):
        return window
    attention_window = getattr(config, "attention_window", None)  # Longformer / BigBird style
    if isinstance(attention_window, list) and attention_window:
        return int(max(attention_window))
    if isinstance(attention_window, int) and attention_window > 0:
        return attention_window
    return None


def has_yes_no_tokens(tokenizer) -> bool:
    vocab = tokenizer.get_vocab()
    return "yes" in vocab and "no" in vocab


def inspect_reranker(folder: ModelFolder) -> RerankerKind:
    """The :class:`RerankerKind` of ``folder``.

    Raises:
        OSError: ``config.json`` cannot be read by transformers.
        ValueError: the model is not a reranker the service can serve; the message says what it is.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder.path))
    except (OSError, ValueError, KeyError) as exc:
        raise OSError(f"model {folder.name!r}: transformers cannot read its config.json ({exc})") from exc
    architectures = list(getattr(config, "architectures", None) or [])
    architecture = architectures[0] if architectures else ""
    model_type = str(getattr(config, "model_type", "") or folder.model_type)
    if architecture.endswith("ForCausalLM"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder.path))
        if not has_yes_no_tokens(tokenizer):
            raise ValueError(
                f"model {folder.name!r} is a {architecture} whose tokenizer has no 'yes' and 'no' tokens; a decoder "
                "reranker scores a pair by logit('yes') - logit('no') (Qwen3-Reranker style)"
            )
        head = YES_NO
    elif architecture.endswith("ForSequenceClassification"):
        labels = int(getattr(config, "num_labels", 1))
        if labels == 1:
            head = LOGIT
        elif labels == 2:
            head = MARGIN
        else:
            names = ", ".join(str(v) for v in (getattr(config, "id2label", None) or {}).values())
            raise ValueError(
                f"model {folder.name!r} is a {architecture} with {labels} labels ({names}); a reranker has one "
                "score (1 label) or a relevant/not-relevant pair (2 labels, ranked by l1 - l0)"
            )
    else:
        found = architecture or f"model without an architectures entry (model_type {model_type!r})"
        raise ValueError(
            f"model {folder.name!r} is a {found}, not a reranker: the service serves *ForSequenceClassification "
            "cross-encoders (1 or 2 labels) and *ForCausalLM rerankers with 'yes'/'no' tokens"
        )
    return RerankerKind(
        model_type=model_type,
        architecture=architecture,
        head=head,
        activation=_activation(config, folder, head),
        additive_mask=model_type in ADDITIVE_MASK_TYPES,
        local_window=_local_window(config),
        token_types=int(getattr(config, "type_vocab_size", 0) or 0) > 1 and head != YES_NO,
    )


def activate(activation: str, scores):
    """``scores`` (a numpy array of logits, margins or yes-no log-odds) through ``activation``."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    if activation == SIGMOID:
        return 1.0 / (1.0 + np.exp(-scores))
    if activation == TANH:
        return np.tanh(scores)
    if activation == IDENTITY:
        return scores
    raise ValueError(f"unknown activation {activation!r}")


def refusal(kind: RerankerKind, runtime: str, precision: str, device: str) -> str | None:
    """Why ``runtime`` at ``precision`` must not serve a model of this kind (known beforehand,
    before anything is built; the torch engine serves every kind); None when nothing is known
    against it (the start-up check still measures it)."""
    if kind.decoder and runtime != "torch":
        return f"decoder rerankers are served by the torch engine only ({runtime} runs exported encoder graphs)"
    return None
