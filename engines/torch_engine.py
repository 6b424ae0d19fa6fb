"""PyTorch engine: the sentence-transformers ``CrossEncoder`` weights run by PyTorch.

CPU in fp32 (or bf16 where asked), CUDA in fp16 by default. The same scoring modules defined here
are what :mod:`engines.export` hands to the ONNX exporter, so every runtime runs one definition of
"the score of a pair" and "the embedding of a text".
"""

from __future__ import annotations

import logging

import numpy as np

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
    """Wraps a ``*ForSequenceClassification`` model: ``(ids, mask, types) -> logits[:, 0]``."""

    @staticmethod
    def build(model):
        torch = _torch()

        class _Module(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                additive = _additive_mask(attention_mask, self.inner.dtype)
                kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
                logits = self.inner(input_ids=input_ids, attention_mask=additive, **kwargs).logits
                return logits[:, 0].float()

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


def load_scoring_module(folder: ModelFolder, task: str, *, device: str = "cpu", dtype=None, attn: str = "eager"):
    """The scoring ``torch.nn.Module`` of ``folder`` for ``task`` (:data:`CROSS` or :data:`EMBED`).

    ``attn="eager"`` for export (plain ops the exporter and ORT's fusions understand),
    ``"sdpa"`` for running in PyTorch.

    Raises:
        OSError: when the weights cannot be loaded, naming the model.
        ValueError: when the model is not a single-logit cross-encoder (for :data:`CROSS`).
    """
    torch = _torch()
    from transformers import AutoModel, AutoModelForSequenceClassification

    dtype = dtype or torch.float32
    try:
        if task == CROSS:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder.path), attn_implementation=attn, dtype=dtype
            )
        else:
            model = AutoModel.from_pretrained(str(folder.path), attn_implementation=attn, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise OSError(f"model {folder.name!r} could not be loaded by transformers: {exc}") from exc
    if task == CROSS:
        if model.config.num_labels != 1:
            raise ValueError(
                f"model {folder.name!r} has {model.config.num_labels} labels; a reranking cross-encoder has one"
            )
        module = CrossEncoderLogit.build(model)
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
        self.module = load_scoring_module(folder, task, device=device, dtype=dtype, attn="sdpa")
        self.token_types = uses_token_types(folder)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        torch = _torch()
        with torch.inference_mode():
            args = [torch.from_numpy(input_ids).to(self.device), torch.from_numpy(attention_mask).to(self.device)]
            if self.token_types:
                args.append(torch.from_numpy(token_type_ids).to(self.device))
            return self.module(*args).float().cpu().numpy()
