"""A labelled retrieval set built from the Python standard library's docstrings.

Nobody here wrote the text: every query and passage is a docstring of the running interpreter's
standard library, read with :mod:`ast` (nothing is imported or run).

* **Query**: the one-line summary of a module's, class's, function's or method's docstring (its first
  paragraph, or its first sentence when the docstring has no blank line), e.g.
  ``"Return the list of libraries to link against when building a shared extension."``
* **Relevant passage**: the rest of that docstring (doctest examples dropped, whitespace
  normalised, cut at a sentence end near :data:`MAX_PASSAGE_WORDS` words).
* **Corpus**: every such passage of the split, including those whose summary was not usable as a
  query, so the documented siblings in the same module are in it as hard negatives.
* **Split** by top-level package (``email.mime.text`` belongs to ``email``), by a fixed hash of the
  package name, so no module is in both splits. Text shared by both splits (the same summary or
  the same passage in two packages) is removed from the training split.

A summary that several objects share (``"Emit a record."``) is one query with all their passages
relevant. Output, one BEIR-layout folder per split::

    OUT_DIR/test/corpus.jsonl   {"_id", "title", "text", "metadata": {"module", "object"}}
    OUT_DIR/test/queries.jsonl  {"_id", "text", "metadata": {"module", "object"}}
    OUT_DIR/test/qrels/test.tsv query-id, corpus-id, score (with a header line)
    OUT_DIR/train/...           the same, with qrels/train.tsv
    OUT_DIR/manifest.json       recipe version, interpreter, packages per split, counts, file hashes

Deterministic: the same interpreter always writes byte-identical files. Build it with
``python -m evaluation.dataset OUT_DIR``; docs/evaluation.md describes its biases.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click

from engines.config import default_cache_dir
from engines.corpus import source_files, stdlib_dir
from engines.models import build_folder

#: Bumped whenever a rule below changes, so cached builds (and models trained on them) are redone.
RECIPE_VERSION = 1
#: Share of top-level packages (not of queries) that go to the test split.
TEST_FRACTION = 0.6
#: Salt of the split hash; changing it draws a different (equally valid) split.
SPLIT_SALT = "kafka-rerank-stdlib-docstrings"
MIN_QUERY_WORDS = 3
MAX_QUERY_WORDS = 30
MIN_PASSAGE_WORDS = 5
MAX_PASSAGE_WORDS = 100
SPLITS = ("train", "test")

# Old-style summaries that are a call signature ("S.find(sub[, start]) -> int"), not a sentence.
_SIGNATURE = re.compile(r"^[\w.\[\]]+\s*\(.*\)\s*(->|-->|-|$)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


@dataclass(frozen=True)
class DocItem:
    """One documented module, class, function or method."""

    package: str  # top-level package or module: the unit of the split
    module: str  # dotted module name
    qualname: str  # Class.method
    summary: str | None  # None when the summary is unusable as a query
    passage: str

    @property
    def object_id(self) -> str:
        """``module:qualname``, or ``module:`` for a module's own docstring."""
        return f"{self.module}:{self.qualname}"


@dataclass
class Split:
    """One split in memory: ids map to texts; ``qrels[query_id]`` is the set of relevant doc ids."""

    name: str
    packages: list[str] = field(default_factory=list)
    corpus: dict[str, str] = field(default_factory=dict)
    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    doc_module: dict[str, str] = field(default_factory=dict)  # for same-module hard negatives
    doc_object: dict[str, str] = field(default_factory=dict)
    query_object: dict[str, str] = field(default_factory=dict)


def split_of(package: str) -> str:
    """``"test"`` or ``"train"`` for a top-level package: a fixed hash, so a package's split does not
    depend on which other packages exist (another Python version moves no package across)."""
    digest = hashlib.sha256(f"{SPLIT_SALT}|{package}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION else "train"


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _documented(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(qualname, docstring) of every class, function and method, in source order."""

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = f"{prefix}{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    yield qualname, doc
                yield from visit(child, f"{qualname}.")
            elif not isinstance(child, ast.expr):  # if/try blocks at module level define objects too
                yield from visit(child, prefix)

    yield from visit(tree, "")


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _summary_and_body(doc: str) -> tuple[str, str] | None:
    """The summary and the rest of a docstring.

    The summary is the first paragraph (PEP 257's summary line), or its first sentence when the
    paragraph is the whole docstring or is too long to be a summary; the rest is the body.
    """
    parts = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)
    first = _normalise(parts[0])
    if len(parts) == 2 and len(first.split()) <= MAX_QUERY_WORDS:
        return first, parts[1]
    match = re.match(r"(.+?[.!?])\s+(\S.*)$", first)
    if match is None:
        return None
    rest = match.group(2) + ("\n\n" + parts[1] if len(parts) == 2 else "")
    return match.group(1), rest


def _clean_passage(body: str) -> str | None:
    """Body prose with doctest examples removed, cut at a sentence end within the word limit."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", body):
        lines = []
        for line in paragraph.strip().splitlines():
            if line.lstrip().startswith(">>>"):
                break  # an example runs to the end of its paragraph, output lines included
            lines.append(line)
        text = _normalise(" ".join(lines))
        if text:
            paragraphs.append(text)
    words = " ".join(paragraphs).split()
    if len(words) < MIN_PASSAGE_WORDS:
        return None
    if len(words) <= MAX_PASSAGE_WORDS:
        return " ".join(words)
    text = " ".join(words[:MAX_PASSAGE_WORDS])
    ends = [m.start() for m in _SENTENCE_END.finditer(text)]
    # A cut at the last sentence end, unless that would drop more than half the text.
    if ends and len(text[: ends[-1]].split()) >= MAX_PASSAGE_WORDS // 2:
        return text[: ends[-1]]
    return text


def _usable_query(summary: str) -> bool:
    words = summary.split()
    return (
        MIN_QUERY_WORDS <= len(words) <= MAX_QUERY_WORDS
        and ">>>" not in summary
        and not _SIGNATURE.match(summary)
        and summary[0].isalpha()
    )


def extract_items(root: Path | None = None, packages: Iterable[str] | None = None) -> list[DocItem]:
    """Every documented object of the standard library at ``root`` (default: this interpreter's)
    whose docstring has a body, in sorted file order then source order.

    Args:
        packages: Only these top-level packages (for fast tests); ``None`` means all.
    """
    root = stdlib_dir() if root is None else Path(root)
    wanted = set(packages) if packages is not None else None
    items: list[DocItem] = []
    for path in source_files(root):
        relative = path.relative_to(root)
        package = relative.parts[0].removesuffix(".py")
        if wanted is not None and package not in wanted:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old modules
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        module = _module_name(relative)
        documented = list(_documented(tree))
        module_doc = ast.get_docstring(tree, clean=True)
        if module_doc:  # a module's own docstring is documented the same way; its qualname is ""
            documented.insert(0, ("", module_doc))
        for qualname, doc in documented:
            parts = _summary_and_body(doc)
            if parts is None:
                continue
            summary, body = parts
            passage = _clean_passage(body)
            if passage is None:
                continue
            items.append(DocItem(package, module, qualname, summary if _usable_query(summary) else None, passage))
    return items


def _query_key(summary: str) -> str:
    return summary.lower()


def build_splits(items: list[DocItem]) -> dict[str, Split]:
    """Group items into the train and test splits (see the module docstring for the rules)."""
    by_split: dict[str, list[DocItem]] = {name: [] for name in SPLITS}
    for item in items:
        by_split[split_of(item.package)].append(item)
    # Nothing shared across the splits: text seen in test is dropped from train, not the reverse,
    # so the test split does not depend on what happens to be in the training packages.
    test_passages = {item.passage for item in by_split["test"]}
    test_queries = {_query_key(item.summary) for item in by_split["test"] if item.summary}
    by_split["train"] = [
        item
        for item in by_split["train"]
        if item.passage not in test_passages and not (item.summary and _query_key(item.summary) in test_queries)
    ]
    splits = {}
    for name, members in by_split.items():
        split = Split(name, packages=sorted({item.package for item in members}))
        doc_of_text: dict[str, str] = {}
        query_of_key: dict[str, str] = {}
        for item in members:
            doc_id = doc_of_text.get(item.passage)
            if doc_id is None:  # identical passages (copied docstrings) are one document
                doc_id = doc_of_text[item.passage] = item.object_id
                split.corpus[doc_id] = item.passage
                split.doc_module[doc_id] = item.module
                split.doc_object[doc_id] = item.object_id
            if item.summary is None:
                continue  # its passage stays in the corpus as a distractor
            key = _query_key(item.summary)
            query_id = query_of_key.get(key)
            if query_id is None:
                query_id = query_of_key[key] = f"q:{item.object_id}"
                split.queries[query_id] = item.summary
                split.query_object[query_id] = item.object_id
                split.qrels[query_id] = {}
            split.qrels[query_id][doc_id] = 1
        splits[name] = split
    return splits


def build_dataset(root: Path | None = None, packages: Iterable[str] | None = None) -> dict[str, Split]:
    """Extract and split in one step: ``{"train": Split, "test": Split}``."""
    return build_splits(extract_items(root, packages))


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def write_beir(split: Split, folder: Path) -> list[Path]:
    """Write one split in the BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); returns the files."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text(
        _jsonl(
            {"_id": doc_id, "title": "", "text": text,
             "metadata": {"module": split.doc_module[doc_id], "object": split.doc_object[doc_id]}}
            for doc_id, text in split.corpus.items()
        ),
        encoding="utf-8",
    )
    (folder / "queries.jsonl").write_text(
        _jsonl(
            {"_id": query_id, "text": text,
             "metadata": {"module": split.query_object[query_id].partition(":")[0],
                          "object": split.query_object[query_id]}}
            for query_id, text in split.queries.items()
        ),
        encoding="utf-8",
    )
    lines = ["query-id\tcorpus-id\tscore\n"]
    lines += [f"{q}\t{d}\t{grade}\n" for q, docs in split.qrels.items() for d, grade in docs.items()]
    (folder / "qrels" / f"{split.name}.tsv").write_text("".join(lines), encoding="utf-8")
    return [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split.name}.tsv"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_dataset(splits: dict[str, Split], out: Path, root: Path | None = None) -> dict:
    """Write every split under ``out`` plus ``manifest.json``; returns the manifest."""
    root = stdlib_dir() if root is None else Path(root)
    files = [path for split in splits.values() for path in write_beir(split, out / split.name)]
    manifest = {
        "name": "stdlib-docstrings",
        "recipe_version": RECIPE_VERSION,
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "stdlib": root.name,
        "test_fraction_of_packages": TEST_FRACTION,
        "splits": {
            name: {
                "packages": split.packages,
                "queries": len(split.queries),
                "documents": len(split.corpus),
                "relevant_pairs": sum(len(docs) for docs in split.qrels.values()),
            }
            for name, split in splits.items()
        },
        "sha256": {p.relative_to(out).as_posix(): _sha256(p) for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def dataset_key(root: Path | None = None) -> str:
    """Short hash naming a build: recipe, interpreter version and stdlib location."""
    root = stdlib_dir() if root is None else Path(root)
    return hashlib.sha256(f"{RECIPE_VERSION}|{sys.version}|{root}".encode()).hexdigest()[:12]


def default_dataset_path() -> Path:
    """``~/.cache/kafka-rerank/eval/stdlib-docstrings-v<recipe>-<key>``."""
    return default_cache_dir() / "eval" / f"stdlib-docstrings-v{RECIPE_VERSION}-{dataset_key()}"


def ensure_dataset(out: str | os.PathLike | None = None) -> Path:
    """Build the dataset into ``out`` (default :func:`default_dataset_path`) unless a build of the same
    recipe is already there; returns the folder (with ``train/`` and ``test/`` inside)."""
    out = Path(out).expanduser().resolve() if out is not None else default_dataset_path()
    manifest = out / "manifest.json"
    try:
        if json.loads(manifest.read_text())["recipe_version"] == RECIPE_VERSION and all(
            (out / name / "corpus.jsonl").is_file() for name in SPLITS
        ):
            return out
    except (OSError, ValueError, KeyError):
        pass
    build_folder(out, lambda staging: write_dataset(build_dataset(), staging))
    return out


@dataclass
class BeirData:
    """A BEIR folder read back: texts by id and graded relevance ``qrels[query_id][doc_id]``."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def read_beir(folder: str | os.PathLike, split: str = "test") -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from a BEIR folder.

    A document's text is ``title + " " + text`` when it has a title (as BEIR's own loaders do).
    Only queries that have at least one relevant document in the qrels are kept.
    """
    folder = Path(folder)
    corpus: dict[str, str] = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                title = (row.get("title") or "").strip()
                corpus[str(row["_id"])] = f"{title} {row['text']}".strip() if title else row["text"]
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            fields = line.rstrip("\n").split("\t")
            if number == 0 and fields[0] == "query-id":
                continue
            if len(fields) == 3:
                query_id, doc_id, grade = fields
                qrels.setdefault(query_id, {})[doc_id] = int(grade)
    queries: dict[str, str] = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                query_id = str(row["_id"])
                if any(grade > 0 for grade in qrels.get(query_id, {}).values()):
                    queries[query_id] = row["text"]
    return BeirData(corpus, queries, {q: qrels[q] for q in queries})


def _main() -> None:
    @click.command(help=__doc__.split("\n\n")[0])
    @click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
    def command(out_dir: Path) -> None:
        out_dir = out_dir.expanduser().resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = write_dataset(build_dataset(), out_dir)
        for name, info in manifest["splits"].items():
            click.echo(
                f"{name}: {info['queries']} queries, {info['documents']} passages, "
                f"{len(info['packages'])} packages -> {out_dir / name}"
            )

    command()


if __name__ == "__main__":
    _main()
