"""The stdlib docstring set: extraction rules, determinism, and a split with no shared module or text."""
from __future__ import annotations

import textwrap

import pytest

from evaluation import dataset
from evaluation.dataset import build_dataset, extract_items, read_beir, split_of, write_dataset


@pytest.fixture(scope="module")
def splits():
    return build_dataset()


def _package(doc_or_query_object: str) -> str:
    return doc_or_query_object.partition(":")[0].split(".")[0]


def test_build_is_byte_identical(tmp_path, splits):
    first = write_dataset(splits, tmp_path / "a")
    second = write_dataset(build_dataset(), tmp_path / "b")
    assert first == second
    for relative in first["sha256"]:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_split_is_disjoint_by_module_and_text(splits):
    train, test = splits["train"], splits["test"]
    assert not set(train.packages) & set(test.packages)
    train_packages = {_package(m) for m in train.doc_module.values()} | {_package(o) for o in train.query_object.values()}
    test_packages = {_package(m) for m in test.doc_module.values()} | {_package(o) for o in test.query_object.values()}
    assert train_packages and test_packages and not train_packages & test_packages
    assert not set(train.corpus.values()) & set(test.corpus.values())
    assert not {q.lower() for q in train.queries.values()} & {q.lower() for q in test.queries.values()}
    for split in (train, test):
        assert all(split_of(p) == split.name for p in split.packages)


def test_every_query_has_relevant_passages_in_its_own_corpus(splits):
    for split in splits.values():
        assert set(split.qrels) == set(split.queries)
        for query_id, docs in split.qrels.items():
            assert docs and set(docs) <= set(split.corpus), query_id
            assert _package(split.query_object[query_id]) in split.packages


def test_size_is_a_few_thousand_queries(splits):
    # Guards against a rule change that quietly guts the set (CPython 3.11 gives ~1.9k test queries).
    assert len(splits["test"].queries) >= 1000
    assert len(splits["train"].queries) >= 1000
    assert len(splits["test"].corpus) > len(splits["test"].queries)  # distractor passages are in


def test_split_of_depends_only_on_the_package_name():
    # Pinned: a different assignment would be a new recipe (bump dataset.RECIPE_VERSION).
    assert dataset.SPLIT_SALT == "kafka-rerank-stdlib-docstrings" and dataset.TEST_FRACTION == 0.6
    assert [split_of(p) for p in ("email", "json", "asyncio", "logging")] == [split_of(p) for p in ("email", "json", "asyncio", "logging")]
    assert split_of("email") == "test" and split_of("logging") == "test"


def test_extraction_rules_on_a_small_library(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(textwrap.dedent('''
        """Tools for counting sheep at night.

        The package gathers helpers that count, sort and name sheep.
        """

        class Flock:
            """A group of sheep kept together.

            A flock remembers every sheep it was given and can count them
            in the order they arrived.
            """

            def count(self):
                """Return how many sheep are in the flock.

                Sheep that jumped over the fence are counted too, because they
                still belong to the flock.

                >>> Flock().count()
                0
                """

            def shear(self):
                """Shear every sheep in the flock.

                >>> Flock().shear()
                """

        def wake(x):
            """wake(x) -> None

            Wake the shepherd when the count reaches a number given by x.
            """

        def bark():
            """Make the dog bark loudly. The dog barks until every sheep is back inside the pen."""

        def yelp():
            """Make the dog bark loudly.

            A second way to get the same noise, used by the night watch.
            """
    '''))
    (tmp_path / "other.py").write_text('def f():\n    """Do the other thing well.\n\n    It is done in five clear words."""\n')
    items = {item.object_id: item for item in extract_items(tmp_path)}
    assert set(items) == {"pkg:", "pkg:Flock", "pkg:Flock.count", "pkg:wake", "pkg:bark", "pkg:yelp", "other:f"}
    assert items["pkg:Flock.count"].summary == "Return how many sheep are in the flock."
    # The doctest is dropped; the prose before it is the passage.
    assert items["pkg:Flock.count"].passage == (
        "Sheep that jumped over the fence are counted too, because they still belong to the flock."
    )
    # A one-paragraph docstring: first sentence is the query, the rest the passage.
    assert items["pkg:bark"].summary == "Make the dog bark loudly."
    assert items["pkg:bark"].passage == "The dog barks until every sheep is back inside the pen."
    # A signature is no query, but its passage stays in the corpus.
    assert items["pkg:wake"].summary is None
    assert items["pkg:"].package == "pkg" and items["other:f"].package == "other"

    split = dataset.build_splits(list(items.values()))
    everything = {**split["train"].corpus, **split["test"].corpus}
    assert "pkg:wake" in everything
    queries = {text: qid for s in split.values() for qid, text in s.queries.items()}
    assert "wake(x) -> None" not in queries
    # Two objects sharing a summary make one query with both passages relevant.
    bark = queries["Make the dog bark loudly."]
    qrels = {**split["train"].qrels, **split["test"].qrels}
    assert set(qrels[bark]) == {"pkg:bark", "pkg:yelp"}


def test_read_beir_round_trip(tmp_path, splits):
    write_dataset(splits, tmp_path)
    data = read_beir(tmp_path / "test", "test")
    test = splits["test"]
    assert data.corpus == test.corpus
    assert data.queries == test.queries
    assert data.qrels == test.qrels
