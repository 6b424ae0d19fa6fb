"""Deprecated alias: ``python -m loadgen.engines`` is now ``python -m loadgen.bench.engine_speed`` (moved in 0.2, removed in 0.3)."""
from loadgen._moved import run_moved

if __name__ == "__main__":
    run_moved("loadgen.engines", "loadgen.bench.engine_speed")
