"""Clients of the rerank service: load generator, benchmarks, demo (they speak only Kafka), plus the
in-process engine benchmark (``python -m loadgen.engines``) and the shared stdlib-docstring corpus
(:mod:`loadgen.corpus`)."""
