"""Shared data types: the batch every activation source yields, and the sparse code every SAE emits.

A sparse code is CSR-shaped so fixed-k (TopK) and variable-k (BatchTopK, Feature-Choice) methods share one
decoder path: row b owns entries offsets[b]:offsets[b+1] of `indices`/`values`.

    code = SparseCode.from_topk(vals, idx)          # [B, k] -> CSR
    x_hat = sparse_decode(code, W_dec, b_dec)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class Batch:
    """Rows of activations at one hook point, as yielded by the cache reader and by live collection."""

    acts: Float[Tensor, "batch d_in"]
    grads: Float[Tensor, "batch d_in"] | None = None
    """dL/dx at the hook (gradient SAEs); aligned row-for-row with acts."""
    token_ids: Int[Tensor, " batch"] | None = None

    def __len__(self) -> int:
        return self.acts.shape[0]

    def to(self, device: str | torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)
        return Batch(move(self.acts), move(self.grads), move(self.token_ids))


def offsets_from_counts(counts: Int[Tensor, " n"]) -> Int[Tensor, " n_plus_1"]:
    """CSR offsets [0, c0, c0+c1, …] (int64) from per-bag entry counts."""
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.long, device=counts.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return offsets


def offsets_from_rows(rows: Int[Tensor, " nnz"], batch: int) -> Int[Tensor, " batch_plus_1"]:
    """CSR offsets of entries already grouped by row, from their row ids."""
    return offsets_from_counts(torch.bincount(rows, minlength=batch))


@dataclass
class SparseCode:
    """A batch of sparse latent codes in CSR form (fp32 values, int64 indices).

    Also the form of a *selection* (an activation's choice of entries of h, values = pre-activations
    without grad) before the encoder turns it into a differentiable code. `rows` caches the row id of
    every entry when the producer already has it.
    """

    values: Float[Tensor, " nnz"]
    indices: Int[Tensor, " nnz"]
    offsets: Int[Tensor, " batch_plus_1"]
    d_sae: int
    rows: Int[Tensor, " nnz"] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_topk(cls, values: Tensor, indices: Tensor, d_sae: int) -> SparseCode:
        """Wrap [B, k] top-k values/indices (fixed k per row)."""
        batch, k = indices.shape
        offsets = torch.arange(0, (batch + 1) * k, k, device=indices.device, dtype=torch.long)
        rows = torch.arange(batch, device=indices.device).repeat_interleave(k)
        return cls(values.reshape(-1), indices.reshape(-1).long(), offsets, d_sae, rows)

    @classmethod
    def from_rows(cls, rows: Tensor, indices: Tensor, values: Tensor, batch: int, d_sae: int) -> SparseCode:
        """Build from (row, latent, value) triples in any order; entries are grouped by row (stable)."""
        order = torch.argsort(rows, stable=True)
        rows = rows[order].long()
        return cls(values[order], indices[order].long(), offsets_from_rows(rows, batch), d_sae, rows)

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1

    def row_ids(self) -> Int[Tensor, " nnz"]:
        if self.rows is not None:
            return self.rows
        counts = self.offsets[1:] - self.offsets[:-1]
        return torch.repeat_interleave(torch.arange(self.batch_size, device=counts.device), counts)

    def with_values(self, values: Float[Tensor, " nnz"]) -> SparseCode:
        """The same entries with new values (e.g. ReLU'd, soft-capped, or carrying autograd)."""
        return SparseCode(values, self.indices, self.offsets, self.d_sae, self.rows)

    def l0_per_row(self) -> Int[Tensor, " batch"]:
        """Nonzero (value > 0) entries per row."""
        nonzero = (self.values > 0).long()
        sums = torch.zeros(self.batch_size, dtype=torch.long, device=nonzero.device)
        return sums.index_add_(0, self.row_ids(), nonzero)

    def to_dense(self) -> Float[Tensor, "batch d_sae"]:
        dense = torch.zeros(self.batch_size, self.d_sae, dtype=self.values.dtype, device=self.values.device)
        dense[self.row_ids(), self.indices] = self.values
        return dense
