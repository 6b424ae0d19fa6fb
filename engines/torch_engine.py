"""PyTorch engine: the sentence-transformers ``CrossEncoder`` weights run by PyTorch.

CPU in fp32 (or bf16 where asked), CUDA in fp16 by default. The same scoring modules defined here
are what :mod:`engines.export` hands to the ONNX exporter, so every runtime runs one definition of
"the score of a pair" and "the embedding of a text".
"""

from __future__ import annotations

import logging

import numpy as np

from engines.families import MARGIN, inspect_reranker
from engines.models import ModelFolder

log = logging.getLogger("engines.torch")

CROSS = "cross"  # (query, document) -> one logit
EMBED = "embed"  # text -> L2-normalised sentence embedding


def _torch():
    import torch

    return torch


def _additive_mask(attention_mask, dtype):
    """(batch, seq) 0/1 mask -> (batch, 1, 1, seq) additive mask: 0 where attended, dtype min elsewhere.

    Passed instead of the 2-D mask, transformers uses it as is, which keeps its mask-building code
    (data-dependent Python) out of the traced ONNX graph; it is also the pattern that ONNX
    Runtime's attention fusion recognises.
    """
    torch = _torch()
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class CrossEncoderLogit:
    """Wraps a ``*ForSequenceClassification`` model: ``(ids, mask, types) -> score``, the logit of a
    one-label head or the margin ``l1 - l0`` of a two-label one (see :mod:`engines.families`).

    ``additive_mask``: hand the model a ready-made additive 4-D mask (the exported graph of the
    families where that is proven equal); otherwise the 2-D 0/1 mask, from which each model builds
    what it needs (DeBERTa multiplies by it, ModernBERT derives its sliding windows from it).
    """

    @staticmethod
    def build(model, *, additive_mask: bool = False, margin: bool = False):
        torch = _torch()

        class _Module(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                mask = _additive_mask(attention_mask, self.inner.dtype) if additive_mask else attention_mask
                kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
                logits = self.inner(input_ids=input_ids, attention_mask=mask, **kwargs).logits
                if margin:
                    return (logits[:, 1] - logits[:, 0]).float()
                return logits[:, 0].float()

        return _Module(model).eval()


class DecoderYesNo:
    """Wraps a ``*ForCausalLM`` reranker: ``(ids, mask) -> logit('yes') - logit('no')`` at the last
    position. Batches are left-padded, so the last position is every row's last real token."""

    @staticmethod
    def build(model, yes_id: int, no_id: int):
        torch = _torch()

        class _Module(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                logits = self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1).logits[:, -1]
                return (logits[:, yes_id] - logits[:, no_id]).float()

        return _Module(model).eval()


class MeanOrClsEmbedding:
    """Wraps a bare encoder (``AutoModel``) with sentence-transformers pooling and L2 normalisation."""

    @staticmethod
    def build(model, pooling: str):
        torch = _torch()

        class _Module(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                additive = _additive_mask(attention_mask, self.inner.dtype)
                kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
                hidden = self.inner(input_ids=input_ids, attention_mask=additive, **kwargs)[0]
                hidden = hidden.float()
                if pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
                    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

        return _Module(model).eval()


def uses_token_types(folder: ModelFolder) -> bool:
    """BERT-like models read segment ids; RoBERTa-like ones (type vocabulary of 1) do not."""
    config = folder.read_json("config.json") or {}
    return int(config.get("type_vocab_size", 0) or 0) > 1


def load_scoring_module(folder: ModelFolder, task: str, *, device: str = "cpu", dtype=None, export: bool = False):
    """The scoring ``torch.nn.Module`` of ``folder`` for ``task`` (:data:`CROSS` or :data:`EMBED`).

    ``export=True``: eager attention (plain ops the exporter and ORT's fusions understand) and, for
    a cross-encoder, the mask form its family is exported with (:mod:`engines.families`).
    Otherwise the attention transformers picks for the model (SDPA where the model has it) and a
    2-D mask: the checkpoint's own forward pass.

    Raises:
        OSError: when the weights cannot be loaded, naming the model.
        ValueError: when the model is not a reranker the service serves (for :data:`CROSS`).
    """
    torch = _torch()
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    dtype = dtype or torch.float32
    kind = inspect_reranker(folder) if task == CROSS else None
    options = {"dtype": dtype}
    if export:
        options["attn_implementation"] = "eager"
    elif task != CROSS:
        options["attn_implementation"] = "sdpa"
    try:
        if kind is not None and kind.decoder:
            model = AutoModelForCausalLM.from_pretrained(str(folder.path), **options)
        elif kind is not None:
            model = AutoModelForSequenceClassification.from_pretrained(str(folder.path), **options)
        else:
            model = AutoModel.from_pretrained(str(folder.path), **options)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise OSError(f"model {folder.name!r} could not be loaded by transformers: {exc}") from exc
    if kind is not None and kind.decoder:
        tokenizer = AutoTokenizer.from_pretrained(str(folder.path))
        module = DecoderYesNo.build(model, tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no"))
    elif kind is not None:
        module = CrossEncoderLogit.build(model, additive_mask=export and kind.additive_mask, margin=kind.head == MARGIN)
    else:
        module = MeanOrClsEmbedding.build(model, folder.pooling_mode())
    return module.to(device)


class TorchBackend:
    """Runs a scoring module in PyTorch on padded numpy batches."""

    runtime = "torch"

    def __init__(self, folder: ModelFolder, task: str, device: str, precision: str, threads: int | None):
        torch = _torch()
        if device == "cpu" and threads:
            # Global to the process: this engine is meant to own the CPU it runs on.
            torch.set_num_threads(threads)
        if device == "cuda":
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32 if precision == "fp32" else torch.float16
        else:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if precision in ("int8", "fp16") and device == "cpu":
            log.info("torch engine: %s is not offered on CPU; running fp32", precision)
        self.device = device
        self.precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        self.module = load_scoring_module(folder, task, device=device, dtype=dtype)
        self.token_types = uses_token_types(folder)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        torch = _torch()
        with torch.inference_mode():
            args = [torch.from_numpy(input_ids).to(self.device), torch.from_numpy(attention_mask).to(self.device)]
            if self.token_types:
                args.append(torch.from_numpy(token_type_ids).to(self.device))
            return self.module(*args).float().cpu().numpy()
