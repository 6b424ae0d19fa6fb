"""Kafka wiring: the Faust worker that turns rerank requests into ranked responses.

``streams`` owns windows, replies and errors; scoring is ``engines``' job and the wire
contract is ``schemas``'.
"""
