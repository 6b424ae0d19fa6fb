"""The calibration inputs of static int8, one set for every runtime that quantizes statically.

OpenVINO's NNCF int8 (:mod:`engines.openvino_engine`) and ONNX Runtime's static int8
(:func:`engines.export.onnx_int8_static`) calibrate their activation ranges on the same
(query, passage) pairs of real English text (the standard-library passages of
:mod:`engines.corpus`), built into model inputs by the engines' own batching code. A static
activation scale is fixed once here, so a pair's int8 score does not depend on which other pairs
share its micro-batch (a dynamic scale, computed per batch, does).
"""

from __future__ import annotations

import hashlib
import random
import sys

import numpy as np

from engines.batching import BatchRunner
from engines.corpus import CORPUS_VERSION, load_passages, queries_with_sources
from engines.export import ExportCache, input_names
from engines.torch_engine import CROSS

CALIBRATION_SAMPLES = 200  # OpenVINO's rank agreement with fp32: 0.9924 at 64, 0.9944 at 128, 0.9955 at 300
CALIBRATION_SEED = 1234


class _Recorder:
    """A backend that keeps the padded batches it is given instead of running them, so that the
    calibration inputs are built by exactly the code that builds real inputs."""

    runtime, device, precision = "record", "cpu", "fp32"

    def __init__(self, names):
        self.names = names
        self.batches: list[dict[str, np.ndarray]] = []

    def run(self, input_ids, attention_mask, token_type_ids):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        self.batches.append({name: feeds[name] for name in self.names})
        return np.zeros((len(input_ids),), dtype=np.float32)


def calibration_batches(cache: ExportCache, tokenizer, max_length: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """Single-sequence batches: for a cross-encoder, each query with the passage it was drawn from
    and with a random other passage (relevant and irrelevant pairs); for a bi-encoder, queries and
    passages alone."""
    passages = load_passages()
    rng = random.Random(CALIBRATION_SEED)
    recorder = _Recorder(input_names(cache.folder))
    # One sequence per batch: no padding, so the calibrated ranges come from real tokens only.
    runner = BatchRunner(tokenizer, recorder, max_length, pad_id, max_batch_tokens=1, max_batch_pairs=1)
    half = CALIBRATION_SAMPLES // 2
    drawn = queries_with_sources(half, seed=CALIBRATION_SEED)
    if cache.task == CROSS:
        query_texts = [q for q, _ in drawn]
        docs = [passages[i] for _, i in drawn] + [passages[rng.randrange(len(passages))] for _ in drawn]
        pair_query = np.concatenate([np.arange(half), np.arange(half)])
        runner.score_pairs(query_texts, docs, pair_query, np.arange(2 * half))
    else:
        runner.embed_texts([q for q, _ in drawn] + [passages[rng.randrange(len(passages))] for _ in drawn])
    runner.close()
    return recorder.batches


def calibration_key(recipe: int) -> str:
    """Names the calibration set and a runtime's int8 ``recipe`` version, so that a different
    corpus (another Python's stdlib, a new corpus version), sample count or recipe makes a new
    quantized model rather than reusing the old one."""
    key = f"{CALIBRATION_SAMPLES}|{CALIBRATION_SEED}|{CORPUS_VERSION}|{sys.version_info[:2]}|{recipe}"
    return hashlib.sha256(key.encode()).hexdigest()[:8]
