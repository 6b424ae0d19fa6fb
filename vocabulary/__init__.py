"""Words the contract, the engines and the worker's settings share, defined once.

The lowest layer of the project: it imports nothing of it, and ``schemas``, ``engines`` and
``streams`` read these names from here (``tests/test_layering.py`` holds the layers), so a new
first stage or stage name is added in one place and reaches the request's JSON Schema, the
engine's policy and ``RERANK_PREFILTER_METHOD`` together.
"""
from __future__ import annotations

from typing import Literal, get_args

#: The prefilter's first stages: what ranks a large request's documents before the cut
#: (engines.first_stage implements each; a request's ``prefilter.method`` names one).
PrefilterMethod = Literal["bi-encoder", "static", "bm25", "client", "static+bm25"]
PREFILTER_METHODS: tuple[PrefilterMethod, ...] = get_args(PrefilterMethod)
BI_ENCODER, STATIC, BM25, CLIENT, STATIC_BM25 = PREFILTER_METHODS

#: Which model gave a document its score: the cross-encoder (or the bi-encoder engine, which
#: has no other), or the prefilter's first stage for a document it cut.
Stage = Literal["cross_encoder", "prefilter"]
CROSS_ENCODER_STAGE, PREFILTER_STAGE = get_args(Stage)

#: Which end of a document too long for the model is kept: ``right`` (default) drops the end, as
#: truncation always did; ``left`` drops the start and keeps the end.
TruncationDirection = Literal["right", "left"]
TRUNCATION_DIRECTIONS: tuple[TruncationDirection, ...] = get_args(TruncationDirection)
RIGHT, LEFT = TRUNCATION_DIRECTIONS

__all__ = [
    "LEFT",
    "RIGHT",
    "TRUNCATION_DIRECTIONS",
    "TruncationDirection",
    "BI_ENCODER",
    "BM25",
    "CLIENT",
    "CROSS_ENCODER_STAGE",
    "PREFILTER_METHODS",
    "PREFILTER_STAGE",
    "STATIC",
    "STATIC_BM25",
    "PrefilterMethod",
    "Stage",
]
