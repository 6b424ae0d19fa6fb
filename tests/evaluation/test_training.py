"""The demo cross-encoder's training code (evaluation.training), without training a model.

Training itself takes minutes and is cached (``python -m evaluation.training``); what can
silently go wrong in it is the split forward pass: the frozen bottom runs once, the top on every
step, and the two halves must compute exactly what the model's own forward pass does, or the
trained weights fit a different network from the one the engines serve.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from engines.testmodel import ensure_test_model
from evaluation.training import RECIPE, _bottom_outputs, _Group, _group_batches, _lexical_teacher, _target, _top_logits


@pytest.mark.parametrize("frozen_layers", [0, 3, 6])
def test_frozen_bottom_then_top_equals_the_models_forward_pass(frozen_layers):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(ensure_test_model())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    recipe = dataclasses.replace(RECIPE, frozen_layers=frozen_layers, max_length=48)
    # Passages of very different lengths, so padding and its attention mask matter.
    groups = [
        _Group("Return the number of items.", "Counts every element, including duplicates.",
               ["Close the file.", "Open a connection to the server and wait for its greeting " * 4], [0.6, 0.1, 0.2]),
        _Group("Parse a date string.", "Accepts ISO 8601 with an optional time zone offset.",
               ["x", "Write the buffer to disk and flush the operating system's cache of it."], [0.5, 0.0, 0.3]),
    ]
    (hidden, attention_mask, teacher), = _bottom_outputs(model, tokenizer, [groups], recipe)
    assert teacher.shape == (2, 3) and attention_mask.min() == 0  # some pairs are padded
    with torch.no_grad():
        split = _top_logits(model, hidden, attention_mask, recipe)
        whole = model(**_group_batches(tokenizer, groups, recipe.max_length)).logits.view(-1)
    assert split.shape == (6,)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-4)


def test_the_target_mixes_the_label_with_the_bi_encoders_preference():
    teacher = torch.tensor([[0.60, 0.10, 0.20], [0.30, 0.50, 0.30]])  # cosines; column 0 is relevant
    labels_only = _target(teacher, dataclasses.replace(RECIPE, distill_weight=0.0))
    torch.testing.assert_close(labels_only, torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
    recipe = dataclasses.replace(RECIPE, distill_weight=0.75, teacher_temperature=0.05)
    mixed = _target(teacher, recipe)
    torch.testing.assert_close(mixed.sum(dim=1), torch.ones(2))
    soft = torch.softmax(teacher / 0.05, dim=1)
    torch.testing.assert_close(mixed, 0.25 * labels_only + 0.75 * soft)
    # where the bi-encoder prefers a negative, the target keeps that preference among the negatives
    # and lifts the relevant passage above the negatives the bi-encoder ties it with
    assert mixed[1, 1] > mixed[1, 2] and mixed[1, 0] > mixed[1, 2] + 0.2


def test_the_lexical_teacher_lifts_passages_that_share_the_querys_words():
    import numpy as np

    passages = ["Compute the checksum of a zipfile member with crc32.",
                "Return a copy of the string with its first character capitalized.",
                "Open a socket and wait for a connection.",
                "Flush the write buffer of the stream to disk."]
    queries = ["Compute the crc32 checksum of a zipfile member.", "Capitalize the string."]
    # The bi-encoder ties every passage for both queries: only the words can tell them apart.
    cosines = np.full((2, 4), 0.5) + np.array([[0.0, 0.01, -0.01, 0.02], [0.02, 0.0, 0.01, -0.01]])
    top = np.tile(np.arange(4), (2, 1))
    assert np.array_equal(_lexical_teacher(cosines, top, passages, queries, 0.0), cosines)
    assert cosines[0].argmax() != 0 and cosines[1].argmax() != 1
    teacher = _lexical_teacher(cosines, top, passages, queries, 2.0)
    assert teacher[0].argmax() == 0 and teacher[1].argmax() == 1
    # BM25 is rescaled to the cosines' spread over the candidates, then weighted
    added = _lexical_teacher(cosines, top, passages, queries, 0.75) - cosines
    np.testing.assert_allclose(added.std(axis=1), 0.75 * cosines.std(axis=1), rtol=1e-5)
    assert added[0, 0] > 0 and added[0, 2] == 0  # a passage without the query's words gains nothing
