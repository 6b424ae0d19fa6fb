"""Clients of the rerank service: load generator, benchmarks, demo (they speak only Kafka)."""
