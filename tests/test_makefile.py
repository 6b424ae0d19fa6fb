"""The Makefile keeps its promises: `make help` lists every target, .PHONY names only real
targets, and `make -s model` prints just the model's folder (README's offline worker recipe,
`RERANK_MODEL=$(make -s model) make worker`, depends on that)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAKEFILE = (REPO / "Makefile").read_text(encoding="utf-8")


def rules() -> set[str]:
    """Names of the targets the Makefile defines (rules, not variable assignments)."""
    names = set()
    for line in MAKEFILE.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?![:=])", line)
        if match:
            names.update(match.group(1).split())
    return names - {".PHONY"}


def phony() -> set[str]:
    """Every name on a .PHONY line (with its backslash continuations)."""
    joined = MAKEFILE.replace("\\\n", " ")
    return {name for line in re.findall(r"^\.PHONY\s*:(.*)$", joined, re.M) for name in line.split()}


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_the_parser_sees_the_targets_everyone_knows() -> None:
    assert {"help", "demo", "test", "worker", "venv", "kafka-jars", "model", "clean", "topics", "lag"} <= rules()


def test_help_lists_every_target() -> None:
    shown = make("-s", "help")
    assert shown.returncode == 0, shown.stderr
    listed = set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", shown.stdout))
    missing = rules() - listed
    assert not missing, f"make help does not list: {sorted(missing)}"
    assert not listed - rules(), f"make help lists targets that do not exist: {sorted(listed - rules())}"


def test_phony_names_only_real_targets_and_every_target_is_phony() -> None:
    assert not phony() - rules(), f".PHONY names targets that do not exist: {sorted(phony() - rules())}"
    # None of them makes a file of its name: a stray file `test` must not stop `make test`.
    assert not rules() - phony(), f"targets missing from .PHONY: {sorted(rules() - phony())}"


def test_make_model_prints_only_the_model_folder() -> None:
    built = make("-s", "model")
    assert built.returncode == 0, built.stderr
    lines = built.stdout.splitlines()
    assert len(lines) == 1, f"expected one line (the folder), got {built.stdout!r}"
    assert (Path(lines[0]) / "config.json").is_file()
