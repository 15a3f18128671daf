"""Documents -> fixed-length token sequences, each starting with BOS.

Documents are tokenized without special tokens, concatenated (separated by EOS when the tokenizer has
one), and cut into pieces of `context_length - 1` tokens; BOS is prepended to every piece, so every
sequence has the same length and position 0 is always BOS (the attention sink the model expects). The
trailing partial piece is dropped. Everything is deterministic, so `skip_sequences` names exact text
(e.g. to hold out evaluation sequences that training never saw).

    seqs = chunk_tokens(iter_texts("embedded"), tok, 128, bos_id=bos, max_sequences=1000)
    for tokens in token_batches(iter_texts("embedded"), tok, 128, 16, bos_id=bos): ...  # [16, 128]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from saekit.errors import CorpusError

TOKENIZE_BATCH = 64
"""Documents per tokenizer call: fast tokenizers parallelise inside one batched call."""


def chunk_tokens(
    texts: Iterable[str],
    tokenizer: Any,
    context_length: int,
    *,
    bos_id: int,
    max_sequences: int | None = None,
    skip_sequences: int = 0,
) -> Iterator[Int[Tensor, " context_length"]]:
    """Yield int64 sequences of `context_length` tokens, BOS first; see the module docstring.

    Raises CorpusError if nothing is produced (empty corpus, text shorter than one sequence, or
    `skip_sequences` beyond the end).
    """
    if context_length < 2:
        raise CorpusError(f"context_length must be >= 2 (BOS plus a token), got {context_length}")
    if max_sequences is not None and max_sequences <= 0:
        return
    piece = context_length - 1
    eos_id = getattr(tokenizer, "eos_token_id", None)
    buffer: list[int] = []
    produced = 0  # sequences cut so far, skipped ones included
    yielded = 0
    for ids in _token_streams(texts, tokenizer, eos_id):
        buffer.extend(ids)
        start = 0
        while len(buffer) - start >= piece:
            if produced >= skip_sequences:
                yield torch.tensor([bos_id, *buffer[start : start + piece]], dtype=torch.long)
                yielded += 1
                if max_sequences is not None and yielded >= max_sequences:
                    return
            produced += 1
            start += piece
        del buffer[:start]
    if yielded == 0 and produced == 0:
        raise CorpusError(
            f"the corpus is empty or shorter than one sequence of {context_length} tokens; "
            "use a larger corpus or a smaller context_length"
        )
    if yielded == 0:
        raise CorpusError(
            f"the corpus has only {produced} sequence(s) of {context_length} tokens but "
            f"skip_sequences={skip_sequences}; skip fewer sequences or use a larger corpus"
        )


def token_batches(
    texts: Iterable[str],
    tokenizer: Any,
    context_length: int,
    batch_size: int,
    *,
    bos_id: int,
    max_sequences: int | None = None,
    skip_sequences: int = 0,
) -> Iterator[Int[Tensor, "batch context_length"]]:
    """`chunk_tokens` stacked into [batch_size, context_length] batches (the last one may be smaller)."""
    if batch_size <= 0:
        raise CorpusError(f"batch_size must be positive, got {batch_size}")
    seqs = chunk_tokens(
        texts,
        tokenizer,
        context_length,
        bos_id=bos_id,
        max_sequences=max_sequences,
        skip_sequences=skip_sequences,
    )
    while batch := list(itertools.islice(seqs, batch_size)):
        yield torch.stack(batch)


def _token_streams(texts: Iterable[str], tokenizer: Any, eos_id: int | None) -> Iterator[list[int]]:
    """Token ids of each document, with EOS between consecutive documents."""
    first = True
    docs = iter(texts)
    while group := list(itertools.islice(docs, TOKENIZE_BATCH)):
        # verbose=False: documents are longer than model_max_length on purpose (they are cut afterwards).
        encoded = tokenizer(group, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            if not ids:
                continue
            if not first and eos_id is not None:
                yield [eos_id]
            first = False
            yield ids
