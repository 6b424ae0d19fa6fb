"""Helpers and fixtures for the engine tests (imported by tests/engines/test_engines*.py; the shared
tests/conftest.py is about Kafka and is not needed here).

Inputs are drawn fresh on every run from a seed taken from the clock and printed, so a failure
can be replayed with ``RERANK_TEST_SEED=<seed>``.
"""

from __future__ import annotations

import os
import random
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach for a model hub

from engines.testmodel import ensure_test_model  # noqa: E402
from engines.corpus import load_passages  # noqa: E402

NON_ASCII = [
    "Ünïcödé façade naïve café — déjà vu",
    "日本語のテキストと中文文本，混合在一起。",
    "Ελληνικά και русский текст с эмодзи 🚀🔥👍",
    "עברית ועربية مختلطة",
]


def fresh_seed(label: str) -> int:
    """A seed from the clock (or RERANK_TEST_SEED), printed so that a failing run can be replayed."""
    seed = int(os.environ.get("RERANK_TEST_SEED") or time.time_ns() % 2**31)
    print(f"\n{label}: seed {seed} (replay with RERANK_TEST_SEED={seed})")
    return seed


def random_text(rng: random.Random, vocabulary: list[str], low: int, high: int) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(low, high)))


def vocabulary() -> list[str]:
    return sorted({w for p in load_passages(400) for w in p.split()})


def edge_documents(rng: random.Random) -> list[str]:
    """Empty, whitespace-only, 100 KB (plain and space-padded), non-ASCII and special-token text."""
    words = vocabulary()
    big = random_text(rng, words, 20_000, 20_000)[:100_000]
    spaced = ("  ".join(rng.choice(words) for _ in range(8000)))[:100_000]
    return ["", "   ", big, spaced, "x" * 100_000, *NON_ASCII, "[SEP] [CLS] [PAD] literal special tokens"]


@pytest.fixture(scope="session")
def test_model_path() -> str:
    """The untrained-head MiniLM-L6 cross-encoder (built once, then reused from the cache)."""
    return str(ensure_test_model())
