"""The demo cross-encoder's training code (engines.training), without training a model.

Training itself takes minutes and is cached (``python -m engines.testmodel --trained``); what can
silently go wrong in it is the split forward pass: the frozen bottom runs once, the top on every
step, and the two halves must compute exactly what the model's own forward pass does, or the
trained weights fit a different network from the one the engines serve.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from engines.testmodel import ensure_test_model
from engines.training import RECIPE, _bottom_outputs, _Group, _group_batches, _top_logits


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
               ["Close the file.", "Open a connection to the server and wait for its greeting " * 4]),
        _Group("Parse a date string.", "Accepts ISO 8601 with an optional time zone offset.",
               ["x", "Write the buffer to disk and flush the operating system's cache of it."]),
    ]
    (hidden, attention_mask, n_groups), = _bottom_outputs(model, tokenizer, [groups], recipe)
    assert n_groups == 2 and attention_mask.min() == 0  # some pairs are padded
    with torch.no_grad():
        split = _top_logits(model, hidden, attention_mask, recipe)
        whole = model(**_group_batches(tokenizer, groups, recipe.max_length)).logits.view(-1)
    assert split.shape == (6,)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-4)
