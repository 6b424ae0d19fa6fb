"""``python -m evaluation``: relevance and speed of every reranking strategy (:mod:`evaluation.relevance`)."""

from evaluation.relevance import main

main(prog_name="python -m evaluation")
