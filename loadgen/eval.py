"""Deprecated alias: ``python -m loadgen.eval`` is now ``python -m evaluation`` (moved in 0.2, removed in 0.3)."""
from loadgen._moved import run_moved

if __name__ == "__main__":
    run_moved("loadgen.eval", "evaluation")
