"""`python -m evaluation` shows the demo model's training progress even without -v: a first
run trains for about half an hour, and silence would look like a hang."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LOG_AS_EVALUATION_DOES = """
import logging, sys
from evaluation.relevance import configure_logging
configure_logging(verbose=sys.argv[1] == "-v")
logging.getLogger("evaluation.training").info("training: step 50/1000, loss 0.700 (last 50), 60 s")
logging.getLogger("engines.onnx").info("an engine's chatter")
logging.getLogger("engines.onnx").warning("an engine's warning")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_training_progress_reaches_stderr_with_or_without_verbose(verbose: bool) -> None:
    done = subprocess.run([sys.executable, "-c", LOG_AS_EVALUATION_DOES, "-v" if verbose else "-"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "evaluation.training training: step 50/1000" in done.stderr
    assert "an engine's warning" in done.stderr
    assert ("an engine's chatter" in done.stderr) is verbose
