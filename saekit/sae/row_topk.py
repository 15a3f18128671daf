"""Per-row top-k of a wide [B, d_sae] matrix, faster than `torch.topk` on CPU by pruning with chunk maxima.

torch's CPU top-k walks every element of every row through a per-row selection. Instead: view each row as
S=16 interleaved slices of G = d_sae/16 columns (column j belongs to chunk j mod G), take the element-wise
max over the slices (one vectorised, memory-bound pass), keep the k chunks with the largest maxima, and
run the exact top-k only over those k·16 candidates.

Exactness: let τ be the k-th largest chunk maximum. Every element above τ lies in a chunk whose maximum
exceeds τ, and all such chunks are kept; the k kept maxima are themselves k elements ≥ τ. So the
candidates contain every element > τ and enough elements equal to τ: the values returned equal
`torch.topk`'s as a multiset (indices can differ only between tied values, which torch leaves unspecified
too). Measured at B=4096 on 2 cores (ms, torch.topk → this): d_sae=16384 k=32 74 → 53, k=64 89 → 70;
d_sae=32768 k=32 108 → 71, k=64 135 → 100.

    values, indices = row_topk(h, k)           # like torch.topk(h, k, dim=1, sorted=False)
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

SLICES = 16
"""Chunk size S: 8 and 16 measured best (S=32 loses the gain to the larger candidate set)."""
MIN_PRUNING = 4
"""Prune only when the candidates (k·S) are at most 1/MIN_PRUNING of the row; otherwise plain top-k."""


def row_topk(
    h: Float[Tensor, "batch d_sae"], k: int, *, sorted: bool = False
) -> tuple[Float[Tensor, "batch k"], Int[Tensor, "batch k"]]:
    """Top-k values and column indices of every row of a 2-D tensor (`sorted=True`: descending)."""
    batch, width = h.shape
    if h.is_cuda or width % SLICES or k * SLICES * MIN_PRUNING > width:
        # GPUs have a fast radix-select top-k; narrow rows gain nothing from pruning.
        return torch.topk(h, k, dim=1, sorted=sorted)
    chunks = width // SLICES
    slices = h.view(batch, SLICES, chunks)
    _, chunk_ids = torch.topk(slices.amax(dim=1), k, dim=1, sorted=False)  # [B, k]
    candidates = slices.gather(2, chunk_ids.unsqueeze(1).expand(batch, SLICES, k))  # [B, S, k]
    values, flat = torch.topk(candidates.reshape(batch, SLICES * k), k, dim=1, sorted=sorted)
    slice_of, chunk_pos = flat.div(k, rounding_mode="floor"), flat.remainder(k)
    return values, slice_of * chunks + chunk_ids.gather(1, chunk_pos)
