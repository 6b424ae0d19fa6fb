"""Documents per request, as the load generator, the benchmarks and the planner name them.

Its own module, with nothing but the standard library, so that the planner (``python -m
loadgen.plan``) reads the same names as the load generator without importing it.
"""
from __future__ import annotations

#: (weight, lowest, highest) documents per request: a uniform range, or a mix of them
Mix = list[tuple[float, int, int]]

#: Named document-count distributions: a uniform range, or a mix of ranges with weights.
DISTRIBUTIONS: dict[str, Mix] = {
    "4-15": [(1.0, 4, 15)],
    "50-100": [(1.0, 50, 100)],
    "100-200": [(1.0, 100, 200)],
    "300-1000": [(1.0, 300, 1000)],
    "mix": [(0.6, 4, 15), (0.25, 50, 100), (0.1, 100, 200), (0.05, 300, 1000)],
}


def parse_distribution(spec: str) -> Mix:
    """A name above, a fixed count "N", "LO-HI", or a mix "LO-HI:W,LO-HI:W" (weights need not sum to 1)."""
    if spec in DISTRIBUTIONS:
        return DISTRIBUTIONS[spec]
    parts = []
    for piece in spec.split(","):
        rng, _, weight = piece.partition(":")
        lo, _, hi = rng.partition("-")
        if not (lo.isdigit() and (hi or lo).isdigit()) or int(lo) < 1 or int(hi or lo) < int(lo):
            raise ValueError(f"bad document-count distribution {spec!r}: use a name "
                             f"({', '.join(DISTRIBUTIONS)}), N, LO-HI, or LO-HI:W,LO-HI:W")
        parts.append((float(weight or 1), int(lo), int(hi or lo)))
    return parts
