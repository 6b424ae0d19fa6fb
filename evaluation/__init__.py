"""Relevance evaluation: what int8 engines and the prefilter cost in ranking quality, measured.

One job: answer "how good are the rankings, and what does each serving strategy cost in them?"
on a labelled set. It holds the three parts that answer it together:

* :mod:`evaluation.dataset`: the labelled ``stdlib-docstrings`` set in BEIR layout, built from the
  standard library's docstrings (``python -m evaluation.dataset OUT_DIR``).
* :mod:`evaluation.training`: the demo cross-encoder fine-tuned on that set's training split, so
  that the evaluation has a model whose scores mean something (``python -m evaluation.training``).
* :mod:`evaluation.relevance`: NDCG@10, MRR@10, Recall@100, retention and pairs/s of every strategy
  through the real engines (``python -m evaluation``).

It sits above ``engines`` (which it uses, with the engine layer's corpus) and beside ``loadgen``
and ``streams``; nothing below imports it. Inference is not done here: every score comes from
:func:`engines.build_reranker`.
"""
