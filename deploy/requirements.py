"""Prints pinned requirement lines from pyproject.toml, one a line, for ``pip install -r``.

    python deploy/requirements.py dependencies        # the worker's ([project].dependencies): pip install .
    python deploy/requirements.py dependencies gpu    # ... and the gpu group: the CUDA image
    python deploy/requirements.py serve               # the CPU worker image: dependencies less the prepare step's
    python deploy/requirements.py serve-no-deps       # ... and these, installed with --no-deps
    python deploy/requirements.py prepare             # what the prepare image adds to the worker image
    python deploy/requirements.py loadgen             # one group alone: the load generator's image
    python deploy/requirements.py dev                 # dependencies and every group but gpu: make venv

Each name is ``dependencies``, a group of ``[project.optional-dependencies]``, ``dev``, or one of the
worker image's lists (``[tool.kafka-rerank.worker-image]``: ``leave-out`` names what only the prepare
step imports, ``no-deps`` what is installed without the packages it declares). A line in several of
the lists named is printed once, where it first comes. The standard library only: the images run it
before anything is installed (pyproject.toml is read from this file's parent folder).
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: groups the development venv leaves out: onnxruntime-gpu and onnxruntime cannot share one environment
NOT_IN_DEV = ("gpu",)


def _name(line: str) -> str:
    """The distribution a requirement line names, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]).lower()


def _lists(pyproject: Path) -> dict[str, list[str]]:
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data["project"]
    groups = project.get("optional-dependencies", {})
    lists = {"dependencies": project["dependencies"], **groups}
    lists["dev"] = [line for name in ["dependencies", *groups] if name not in NOT_IN_DEV for line in lists[name]]
    image = data.get("tool", {}).get("kafka-rerank", {}).get("worker-image", {})
    leave_out = {_name(name) for name in image.get("leave-out", [])}
    no_deps = {_name(name) for name in image.get("no-deps", [])}
    runtime = project["dependencies"]
    lists["serve"] = [line for line in runtime if _name(line) not in leave_out | no_deps]
    lists["serve-no-deps"] = [line for line in runtime if _name(line) in no_deps - leave_out]
    lists["prepare"] = [line for line in runtime if _name(line) in leave_out]
    return lists


def requirements(names: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The requirement lines of the lists ``names``, in order, each line once."""
    lists = _lists(pyproject)
    unknown = [name for name in names if name not in lists]
    if unknown or not names:
        raise SystemExit(f"usage: python deploy/requirements.py LIST... with LIST one of {', '.join(lists)}"
                         + (f" (not {', '.join(unknown)})" if unknown else ""))
    return list(dict.fromkeys(line for name in names for line in lists[name]))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
