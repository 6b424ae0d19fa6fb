"""The old ``python -m`` entry points of modules that moved in 0.2, kept as thin aliases until 0.3.

An alias starts the new command in place of this process (``os.execv``) rather than importing it:
some moved to the ``evaluation`` package, which ``loadgen`` must not import.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

REMOVED_IN = "0.3"


def run_moved(old: str, new: str) -> NoReturn:
    """Say where ``python -m old`` went, then run ``python -m new`` with the same arguments."""
    print(f"`python -m {old}` moved to `python -m {new}`; this alias goes in {REMOVED_IN}", file=sys.stderr)
    os.execv(sys.executable, [sys.executable, "-m", new, *sys.argv[1:]])
