"""Deprecated alias: ``python -m loadgen.gpu_bench`` is now ``python -m loadgen.bench.gpu`` (moved in 0.2, removed in 0.3)."""
from loadgen._moved import run_moved

if __name__ == "__main__":
    run_moved("loadgen.gpu_bench", "loadgen.bench.gpu")
