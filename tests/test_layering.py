"""The tree keeps the layering of README's architecture table: dependencies point one way.

import-linter checks the contracts in ``pyproject.toml`` (``[tool.importlinter]``) over every
import statement of our packages, those inside functions too. The checker itself is tested here
as well: on a copy of the tree, a deliberately added upward import (a lazy one, inside a function)
and a deliberately added circle must each break a contract.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vocabulary", "schemas", "engines", "streams", "loadgen", "evaluation")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the tree at ``root``, with that tree first on the import path."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent)},
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    """The packages' Python files and pyproject.toml, copied to a folder of their own."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "json"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def add_lazy_import(module: Path, statement: str) -> None:
    """Append a function whose body imports ``statement``: an import hidden from the top of the file."""
    with open(module, "a", encoding="utf-8") as handle:
        handle.write(f"\n\ndef _added_by_the_layering_test():\n    {statement}\n")


def test_the_tree_keeps_every_contract():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, statement, broken", [
    ("engines/config.py", "import loadgen.client", "Layers"),          # the engines reach up to a client
    ("engines/batching.py", "from evaluation import dataset", "Layers"),  # ... to the evaluation
    ("schemas/request.py", "import streams.inbox", "Layers"),       # the contract reaches up to the worker
    ("streams/inbox.py", "from loadgen.cluster import workers", "Layers"),
    ("vocabulary/__init__.py", "import schemas.request", "Layers"),  # the shared words reach up
    ("streams/intake.py", "from loadgen import client", "Layers"),
    ("loadgen/run.py", "import evaluation.relevance", "Layers"),      # two packages of one layer
    ("engines/models.py", "from engines import reranker", "circle"),  # reranker imports models already
    ("schemas/parsing.py", "import confluent_kafka", "know nothing of Kafka"),
])
def test_a_deliberate_breach_breaks_a_contract(tree_copy, module, statement, broken):
    assert lint_imports(tree_copy).returncode == 0  # the copy is as clean as the tree
    add_lazy_import(tree_copy / module, statement)
    result = lint_imports(tree_copy)
    assert result.returncode != 0, result.stdout[-3000:]
    broken_section = result.stdout.partition("Broken contracts")[2]  # each broken contract, by name
    assert broken in broken_section, result.stdout[-3000:]


def test_every_package_opens_with_a_docstring_naming_its_job():
    for init in sorted(REPO.glob("*/__init__.py")) + sorted(REPO.glob("loadgen/*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring and len(docstring.split()) >= 15, f"{init.relative_to(REPO)} does not say its job"
