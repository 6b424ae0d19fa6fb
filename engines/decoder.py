"""Decoder rerankers (Qwen3-Reranker style): a causal LM asked whether a document answers a query.

The model reads one prompt per pair and the score is ``logit('yes') - logit('no')`` at the last
position (its sigmoid is the softmax probability of "yes" over {yes, no}, which is how the
Qwen3-Reranker model card turns it into a relevance). The prompt is the model card's::

    <|im_start|>system
    Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>
    <|im_start|>user
    <Instruct>: {instruction}
    <Query>: {query}
    <Document>: {document}<|im_end|>
    <|im_start|>assistant
    <think>

    </think>

tokenized as the model card does it: the fixed prefix and suffix on their own, the middle part
truncated from the right (the end of the document goes first) to what ``max_length`` leaves.
Batches are left-padded, so every row's last real token is at the last position; the model's
rotary positions make the result independent of how much padding a row has.

Only the torch engine runs them (CPU fp32/bf16, CUDA fp16/bf16).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.batching import BatchRunner, PreparedPairs, TokenCache

#: The model card's default instruction.
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
#: What stands between the query and the document in the prompt.
DOCUMENT_TAG = "\n<Document>: "
#: Tokens kept free beside a chunk, where BPE may merge across the document's edges.
EDGE_TOKENS = 2
#: The longest prompt the model card tokenizes (its ``max_length``); a larger position table is not used.
DEFAULT_MAX_LENGTH = 8192


@dataclass(frozen=True)
class DecoderPrompt:
    """The prompt template of a decoder reranker."""

    prefix: str = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
                   'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
    suffix: str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    instruction: str = DEFAULT_INSTRUCTION

    def head(self, query: str, instruction: str | None = None) -> str:
        """The body's start, before the document: the instruction (the default when ``None``)
        and the query."""
        return f"<Instruct>: {self.instruction if instruction is None else instruction}\n<Query>: {query}"

    def body(self, head: str, document: str) -> str:
        """The part between prefix and suffix, the one that is truncated: a :meth:`head`, then the
        document."""
        return f"{head}{DOCUMENT_TAG}{document}"


QWEN3_RERANKER = DecoderPrompt()


class DecoderBatchRunner(BatchRunner):
    """A :class:`~engines.batching.BatchRunner` whose pairs are whole prompts, left-padded.

    Each pair is tokenized as one text (the query and the document meet inside the prompt, where a
    BPE tokenizer may merge across them), then cut, batched and run like any other sequences.
    """

    def __init__(self, tokenizer, backend, max_length: int, pad_id: int, max_batch_tokens: int, max_batch_pairs: int,
                 max_backlog_batch_tokens: int | None = None, prompt: DecoderPrompt = QWEN3_RERANKER,
                 overlap: bool = True, tokenize_threads: int = 1):
        super().__init__(tokenizer, backend, max_length, pad_id, max_batch_tokens, max_batch_pairs,
                         max_backlog_batch_tokens, overlap=overlap, tokenize_threads=tokenize_threads)
        self.prompt = prompt
        self.prefix_ids = np.asarray(tokenizer.encode(prompt.prefix, add_special_tokens=False).ids, dtype=np.int64)
        self.suffix_ids = np.asarray(tokenizer.encode(prompt.suffix, add_special_tokens=False).ids, dtype=np.int64)
        self.body_budget = self.max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if self.body_budget < 1:
            raise ValueError(f"max_length {self.max_length} leaves no room between the prompt's prefix and suffix")
        self.text_budget = self.body_budget

    takes_instruction = True

    def pair_query(self, query: str, instruction: str | None = None) -> str:
        """The prompt's head: the job's instruction (the model card's when ``None``) and the query."""
        return self.prompt.head(query, instruction)

    def document_room(self, query: str) -> int:
        [length] = self.encoder.encode([query + DOCUMENT_TAG]).lengths
        return max(1, self.body_budget - int(length) - EDGE_TOKENS)

    def prepare_pairs(self, queries: Sequence[str], documents: Sequence[str], pair_query: np.ndarray,
                      pair_doc: np.ndarray, tokens: TokenCache | None = None) -> PreparedPairs:
        # ``queries`` are prompt heads (:meth:`pair_query`), as every pair's query side is.
        # ``tokens`` (a first stage's token ids of the documents) is not used: a decoder reads each
        # document inside its prompt, where a document's tokens can merge with the text around it.
        started = time.perf_counter()
        bodies = self._encode([self.prompt.body(queries[int(q)], documents[int(d)]) for q, d in zip(pair_query, pair_doc)])
        kept = np.minimum(np.asarray(bodies.lengths, dtype=np.int64), self.body_budget)
        prefix, suffix = self.prefix_ids, self.suffix_ids
        lengths = kept + len(prefix) + len(suffix)

        def build(rows: np.ndarray, width: int):
            ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, k in enumerate(rows):
                body = bodies.ids[k][: int(kept[k])]
                start = width - int(lengths[k])  # left padding: the last real token is at the last position
                row = ids[r]
                row[start : start + len(prefix)] = prefix
                row[start + len(prefix) : start + len(prefix) + len(body)] = body
                row[width - len(suffix) :] = suffix
                mask[r, start:] = 1
            return ids, mask, np.zeros_like(ids)

        return PreparedPairs(lengths, build, time.perf_counter() - started)


def reference_decoder_inputs(tokenizer, queries: Sequence[str], documents: Sequence[str], max_length: int,
                             prompt: DecoderPrompt = QWEN3_RERANKER):
    """Token ids of each pair exactly as the Qwen3-Reranker model card builds them (with the
    transformers tokenizer), for checks: a list of lists, not padded."""
    prefix = tokenizer.encode(prompt.prefix, add_special_tokens=False)
    suffix = tokenizer.encode(prompt.suffix, add_special_tokens=False)
    bodies = tokenizer([prompt.body(prompt.head(q), d) for q, d in zip(queries, documents)], padding=False,
                       truncation="longest_first", return_attention_mask=False,
                       max_length=max_length - len(prefix) - len(suffix))["input_ids"]
    return [prefix + body + suffix for body in bodies]
