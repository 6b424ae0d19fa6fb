"""Prints pinned requirement lines from pyproject.toml, one a line, for ``pip install -r``.

    python deploy/requirements.py dependencies        # the worker's ([project].dependencies): its image
    python deploy/requirements.py dependencies gpu    # ... and the gpu group: the CUDA image
    python deploy/requirements.py loadgen             # one group alone: the load generator's image
    python deploy/requirements.py dev                 # dependencies and every group but gpu: make venv

Each name is ``dependencies``, a group of ``[project.optional-dependencies]``, or ``dev``. A line in
several of the lists named is printed once, where it first comes. The standard library only: the
images run it before anything is installed (pyproject.toml is read from this file's parent folder).
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: groups the development venv leaves out: onnxruntime-gpu and onnxruntime cannot share one environment
NOT_IN_DEV = ("gpu",)


def requirements(names: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The requirement lines of the lists ``names``, in order, each line once."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    groups = project.get("optional-dependencies", {})
    lists = {"dependencies": project["dependencies"], **groups}
    lists["dev"] = [line for name in ["dependencies", *groups] if name not in NOT_IN_DEV for line in lists[name]]
    unknown = [name for name in names if name not in lists]
    if unknown or not names:
        raise SystemExit(f"usage: python deploy/requirements.py LIST... with LIST one of {', '.join(lists)}"
                         + (f" (not {', '.join(unknown)})" if unknown else ""))
    return list(dict.fromkeys(line for name in names for line in lists[name]))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
