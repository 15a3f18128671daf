"""From corpus to cache rows: deterministic batches of sequences, kept positions, and flattened captures.

Shared by `collect` (disk) and `LiveStream` (no disk) so both exclude exactly the same positions.
Sequence ids are absolute indices into the chunked corpus (`skip_sequences` + i), so a resumed or held-out
pass can name the same sequences again.

    for seqs in iter_sequence_batches(cfg, model, skip_sequences=cfg.skip_sequences):
        keep, counts = keep_mask(seqs.tokens, model, drop_last=cfg.capture_grads)
        block = rows_from_capture(seqs, keep, cap.acts[hook], None)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saekit.config import CollectConfig
from saekit.errors import ConfigError, DataError


def model_seam():
    """`saekit.models`, imported on first use: it loads TransformerLens (seconds), which code that only
    reads an existing cache never needs."""
    from saekit import models

    return models


def corpora():
    """`saekit.data`, imported on first use (see `model_seam`)."""
    from saekit import data

    return data


def check_context_length(model: Any, context_length: int, key: str = "context_length") -> None:
    """ConfigError when sequences would be longer than the model's position table (n_ctx)."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(n_ctx, int) and context_length > n_ctx:
        raise ConfigError(
            f"{key}={context_length} exceeds the model's context of {n_ctx} tokens; set {key}={n_ctx} or less"
        )


@dataclass
class SequenceBatch:
    """Consecutive corpus sequences of one length, stacked: tokens[i] is sequence first_seq_id + i."""

    first_seq_id: int
    tokens: Int[Tensor, "batch ctx"]

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass
class RowBlock:
    """Kept positions of one SequenceBatch at one hook point, flattened sequence-major."""

    acts: Float[Tensor, "n d_in"]
    token_ids: Int[Tensor, " n"]
    seq_ids: Int[Tensor, " n"]
    positions: Int[Tensor, " n"]
    grads: Float[Tensor, "n d_in"] | None = None

    def __len__(self) -> int:
        return self.acts.shape[0]

    def head(self, n: int) -> RowBlock:
        return self.slice(0, n)

    def slice(self, start: int, stop: int) -> RowBlock:
        cut = lambda t: None if t is None else t[start:stop]
        return RowBlock(
            *(cut(t) for t in (self.acts, self.token_ids, self.seq_ids, self.positions, self.grads))
        )


def iter_sequence_batches(cfg: CollectConfig, model: Any, *, skip_sequences: int) -> Iterator[SequenceBatch]:
    """Chunk the corpus and group `cfg.batch_size` consecutive sequences per batch.

    Groups start at `skip_sequences`, so the same skip always yields the same batches (a resumed
    collection re-runs identical forward passes, hence bit-identical activations). A sequence of a different
    length (a short tail chunk) closes the current group, since sequences of one batch must stack.
    """
    data, models = corpora(), model_seam()
    texts = data.iter_texts(cfg.corpus, text_field=cfg.text_field)
    sequences = data.chunk_tokens(
        texts,
        models.tokenizer_of(model),
        cfg.context_length,
        bos_id=models.bos_token_id(model),
        skip_sequences=skip_sequences,
    )
    next_id = skip_sequences
    group: list[Tensor] = []
    for seq in itertools.chain(sequences, [None]):
        if group and (seq is None or len(group) == cfg.batch_size or seq.shape[0] != group[0].shape[0]):
            yield SequenceBatch(next_id, torch.stack(group).long())
            next_id += len(group)
            group = []
        if seq is not None:
            group.append(torch.as_tensor(seq))


def keep_mask(
    tokens: Int[Tensor, "batch ctx"], model: Any, *, drop_last: bool
) -> tuple[Bool[Tensor, "batch ctx"], dict[str, int]]:
    """Positions to store, and how many were excluded by reason.

    Special positions (BOS etc.) are excluded (algorithms.md §11.2). With gradients, the last position is
    excluded too: it has no next-token label, so its gradient is identically zero (§5.3).
    """
    special = model_seam().special_token_mask(tokens, model).to(torch.bool).cpu()
    keep = ~special
    excluded = {"special": int(special.sum())}
    if drop_last:
        excluded["last_no_label"] = int(keep[:, -1].sum())
        keep[:, -1] = False
    return keep, excluded


def rows_from_capture(
    seqs: SequenceBatch,
    keep: Bool[Tensor, "batch ctx"],
    acts: Float[Tensor, "batch ctx d_in"],
    grads: Float[Tensor, "batch ctx d_in"] | None,
) -> RowBlock:
    """Flatten the kept positions, in (sequence, position) order, into rows."""
    b_idx, t_idx = keep.nonzero(as_tuple=True)
    pick = lambda t: None if t is None else t.detach().cpu()[b_idx, t_idx]
    return RowBlock(
        acts=pick(acts),
        token_ids=seqs.tokens[b_idx, t_idx],
        seq_ids=seqs.first_seq_id + b_idx,
        positions=t_idx,
        grads=pick(grads),
    )


def check_finite(block: RowBlock, hookpoint: str) -> None:
    """Raise DataError naming the hook point, sequence and position of the first NaN/inf row."""
    for name in ("acts", "grads"):
        tensor = getattr(block, name)
        if tensor is None:
            continue
        bad = ~torch.isfinite(tensor).all(dim=1)
        if bad.any():
            row = int(bad.nonzero()[0])
            raise DataError(
                f"non-finite {name} at hook {hookpoint!r}, sequence {int(block.seq_ids[row])}, position "
                f"{int(block.positions[row])} ({int(bad.sum())} bad rows in this batch). Try "
                "dtype=float32 and autocast_bf16=false, or skip that text with skip_sequences"
            )
