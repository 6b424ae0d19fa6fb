"""The engine layer's own text: real English passages that every machine already has, the running
interpreter's standard-library docstrings.

It lives in ``engines`` because int8 calibration (:mod:`engines.openvino_engine`) draws its
(query, passage) pairs from it, and the engine layer takes nothing from the packages above it. The
engine benchmark, the load generator, the tests and the evaluation dataset read it too.

Passages are docstring paragraphs of 40 to 80 words (short neighbours joined, long ones cut at
sentence ends), read with :mod:`ast` (no stdlib module is
imported or run), in sorted file order, whitespace-normalised and de-duplicated, so the same
interpreter always yields the same passages in the same order. Queries are short keyword phrases
drawn from passages with a fixed seed, so each query has a passage it comes from.

Usage::

    from engines.corpus import load_passages, queries
    docs = load_passages(2000)
    qs = queries(50)
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import random
import re
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

from engines.config import default_cache_dir

MIN_WORDS = 40
MAX_WORDS = 80
#: Bumped when the extraction rules change, so cached corpora are rebuilt.
CORPUS_VERSION = 2

# Test suites and demos read less like documentation.
_SKIP_DIRS = {"test", "tests", "idle_test", "turtledemo", "site-packages", "dist-packages", "ensurepip",
              "__pycache__", "pydoc_data"}
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_STOPWORDS = frozenset(
    """a an the and or of to in on for is are be by with as at it its this that these those from into
    if not no can may will when which who what how than then there their they them such any all each
    other also only more most some one two was were been has have had do does use used using you your
    we our us so but should would could must returns return given value values default see object objects
    none true false""".split()
)


def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path) -> list[Path]:
    """The library's .py files in a fixed order, without test suites, demos and vendored code."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        files.extend(Path(dirpath) / name for name in sorted(filenames) if name.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(tree: ast.AST):
    # ast.walk is breadth-first and deterministic for a given source.
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def _is_prose(paragraph: str) -> bool:
    """Reject code samples, tables, option lists and the like: keep running English text."""
    if any(marker in paragraph for marker in (">>>", "==", "->", "{", "}", "|", "\t", "http", "$")):
        return False
    lines = paragraph.splitlines()
    if any(line.lstrip().startswith(("-", "*", "+", "#", ":", "..")) for line in lines):
        return False
    tokens = paragraph.split()
    wordlike = sum(1 for t in tokens if _WORD.fullmatch(t.strip(".,;:()'\"")))
    return wordlike >= 0.85 * len(tokens) and paragraph[0].isupper() and paragraph.rstrip()[-1] in ".!?):"


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)


def _passages_of(doc: str):
    """Passages of 40-80 words from one docstring: prose paragraphs as they are, short neighbouring
    paragraphs joined, long ones cut at sentence ends."""
    pending: list[str] = []
    for raw in re.split(r"\n\s*\n", doc):
        raw = raw.strip()
        if not raw or not _is_prose(raw):
            pending = []  # a code sample or list breaks the run of prose
            continue
        text = " ".join(raw.split())
        if text.endswith("::"):  # reST "for example::" introduces a code block
            text = text[:-1]
        words = len(text.split())
        if words > MAX_WORDS:
            pending = []
            chunk: list[str] = []
            for sentence in _sentences(text):
                if chunk and len(" ".join(chunk + [sentence]).split()) > MAX_WORDS:
                    if MIN_WORDS <= len(" ".join(chunk).split()) <= MAX_WORDS:
                        yield " ".join(chunk)
                    chunk = []
                chunk.append(sentence)
            if chunk and MIN_WORDS <= len(" ".join(chunk).split()) <= MAX_WORDS:
                yield " ".join(chunk)
            continue
        joined = " ".join(pending + [text])
        if len(joined.split()) > MAX_WORDS:
            pending, joined = [text], text
        else:
            pending.append(text)
        if len(joined.split()) >= MIN_WORDS:
            yield joined
            pending = []


def _extract(limit: int | None) -> list[str]:
    seen: set[str] = set()
    passages: list[str] = []
    for path in source_files(stdlib_dir()):
        try:
            source = path.read_text(encoding="utf-8")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old modules
                tree = ast.parse(source, filename=str(path))
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        for doc in _docstrings(tree):
            for text in _passages_of(doc):
                if text not in seen:
                    seen.add(text)
                    passages.append(text)
                    if limit is not None and len(passages) >= limit:
                        return passages
    return passages


def _cache_file() -> Path:
    base = default_cache_dir()
    key = hashlib.sha256(f"{CORPUS_VERSION}|{sys.version}|{stdlib_dir()}".encode()).hexdigest()[:16]
    return base / "corpus" / f"stdlib-passages-{key}.json"


@functools.lru_cache(maxsize=1)
def _all_passages() -> tuple[str, ...]:
    cache = _cache_file()
    try:
        return tuple(json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    passages = _extract(None)
    try:  # the cache only saves a few seconds; failing to write it is not an error
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, delete=False, encoding="utf-8") as tmp:
            json.dump(passages, tmp, ensure_ascii=False)
        os.replace(tmp.name, cache)
    except OSError:
        pass
    return tuple(passages)


def load_passages(n: int | None = None) -> list[str]:
    """The first ``n`` passages (all when ``None``), always in the same order for one interpreter.

    Raises:
        ValueError: if the standard library has fewer than ``n`` passages.
    """
    passages = _all_passages()
    if n is None:
        return list(passages)
    if n > len(passages):
        raise ValueError(f"the standard library yields only {len(passages)} passages, {n} were asked for")
    return list(passages[:n])


def queries(n: int, seed: int = 0) -> list[str]:
    """``n`` short search queries (2 to 6 content words) taken from randomly chosen passages.

    Deterministic for a given ``seed``; see :func:`queries_with_sources` for the source passages.
    """
    return [query for query, _ in queries_with_sources(n, seed)]


def queries_with_sources(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` pairs of (query, index into :func:`load_passages` of the passage it was drawn from)."""
    passages = _all_passages()
    rng = random.Random(seed)
    out: list[tuple[str, int]] = []
    while len(out) < n:
        index = rng.randrange(len(passages))
        words = [w.strip(".,;:()'\"").lower() for w in passages[index].split()]
        content = list(dict.fromkeys(w for w in words if _WORD.fullmatch(w) and w not in _STOPWORDS and len(w) > 2))
        if len(content) < 2:
            continue
        k = rng.randint(2, min(6, len(content)))
        start = rng.randrange(len(content) - k + 1)
        out.append((" ".join(content[start : start + k]), index))
    return out


if __name__ == "__main__":
    all_passages = load_passages()
    print(f"{len(all_passages)} passages from {stdlib_dir()}")
    for text in all_passages[:3]:
        print("-", text)
    for query in queries(5):
        print("?", query)
