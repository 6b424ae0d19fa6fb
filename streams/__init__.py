"""Kafka wiring: the Faust worker that turns rerank requests into ranked responses.

One job: ``streams`` owns windows, replies, errors and delivery; scoring is ``engines``' job and
the wire contract is ``schemas``'. It imports those two and nothing else of this repository.
"""
