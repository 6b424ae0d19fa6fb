"""Small parts stay small: no class of the service longer than 250 lines, no function longer
than 60, so that a part keeps one job (issue #21). The model-building tools (the family
stand-ins and the test model) are not part of the service and are left out."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICE_PACKAGES = ("vocabulary", "schemas", "engines", "streams")
TOOLS = {"engines/standins.py", "engines/testmodel.py"}
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60


def too_long() -> list[str]:
    found = []
    for package in SERVICE_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = path.relative_to(REPO).as_posix()
            if name in TOOLS:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
                if isinstance(node, ast.ClassDef) and lines > MAX_CLASS_LINES:
                    found.append(f"{name}:{node.lineno} class {node.name}: {lines} lines")
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and lines > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}(): {lines} lines")
    return found


def test_no_class_or_function_of_the_service_is_too_long():
    assert not too_long(), "\n".join(too_long())


def test_the_check_sees_a_long_function(tmp_path, monkeypatch):
    package = tmp_path / "streams"
    package.mkdir()
    body = "\n".join(f"    x{k} = {k}" for k in range(MAX_FUNCTION_LINES))
    (package / "long.py").write_text(f"def long():\n{body}\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert too_long() == [f"streams/long.py:1 long(): {MAX_FUNCTION_LINES + 1} lines"]
