"""``python -m loadgen.plan``: replicas, cores and partitions for a load (see loadgen.bench.plan)."""
from loadgen.bench.plan import main

if __name__ == "__main__":
    main()
