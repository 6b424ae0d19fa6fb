"""What every benchmark does with its report: the command that made it, its files, its Markdown tables.

    report = {"command": command("loadgen.bench.replicas"), "machine": machine(), ...}
    write_json(json_path, report)                     # nothing when json_path is None
    write_text(md_path, "\n".join(table(["engine", "pairs/s"], rows, align="lr")) + "\n")

The machine it ran on is :func:`loadgen.bench.machine.machine`'s: kept apart, since describing it
reads the engines' CPU probes and the planner (:mod:`loadgen.bench.plan`), which writes its reports
here too, imports nothing of the engines.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path


def command(module: str) -> str:
    """The command line of this run, as ``python -m MODULE ARGS...``."""
    return " ".join(["python", "-m", module, *sys.argv[1:]])


def write_text(path: str | Path | None, text: str) -> Path | None:
    """Write ``text`` to ``path``, its folder made first; nothing when ``path`` is None."""
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_json(path: str | Path | None, report: dict, indent: int = 2) -> Path | None:
    """The report as JSON (what JSON cannot hold, as its string) to ``path``; nothing when None."""
    return write_text(path, json.dumps(report, indent=indent, default=str) + "\n")


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A Markdown table's lines. ``align``: a letter per column, ``r`` right-aligned (numbers), any
    other or none left-aligned."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align.ljust(len(header))) + "|"
    return [_row(header), rule, *(_row(row) for row in rows)]


def _row(cells: Sequence[object]) -> str:
    return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in cells) + "|"
