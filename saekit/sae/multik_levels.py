"""Level lists and the sorted per-row selection behind the multi-k objectives (algorithms.md §3.3, §6).

Every multi-k objective selects the top-K entries of each row sorted by value, so the code at budget k is
the first k entries of each row (nested supports by construction). Gradients reach the encoder only through
`encode_selected` on the selected entries; `level_block_sums` decodes every level with ONE `sparse_decode`
(block g holds the entries ranked in [k_{g−1}, k_g)). The methods are in `saekit.sae.methods.multik`.

    levels = multi_topk_levels(sae.cfg.params, sae.d_sae)           # e.g. [32, 128]
    sc = encode_sorted(sae, x, levels[-1])
    x_hats = nested_level_reconstructions(sc, levels, sae.W_dec, sae.b_dec)   # [B, n_levels, d]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saekit.errors import ConfigError
from saekit.kernels import encode_selected
from saekit.sae.model import Sae
from saekit.sae.prefixes import block_sums
from saekit.sae.row_topk import row_topk
from saekit.types import SparseCode, offsets_from_rows

SOFT_CAP = 30.0
"""MSAE soft cap: z = 30·tanh(ReLU(h)/30), so |z| < 30 (WolodjaZ/MSAE)."""


def soft_cap(u: Float[Tensor, "..."], cap: float = SOFT_CAP) -> Float[Tensor, "..."]:
    return cap * torch.tanh(u / cap)


# ---------------------------------------------------------------------------------------- levels


def multi_topk_levels(cfg: Any, d_sae: int) -> list[int]:
    """cfg.k_levels, else (k, 4k) — capped at d_sae, strictly increasing (`cfg`: the method section)."""
    levels = list(cfg.k_levels) if cfg.k_levels is not None else [cfg.k, 4 * cfg.k]
    return _check_levels(sorted({min(int(k), d_sae) for k in levels}), d_sae, "k_levels")


def msae_k_levels(start: int, d_sae: int) -> list[int]:
    """k_1 = start, doubling while below d_sae, then d_sae itself (e.g. 64, 128, …, 4096, 6144)."""
    if start <= 0:
        raise ConfigError(f"sae.k_levels[0] must be positive, got {start}")
    levels, k = [], int(start)
    while k < d_sae:
        levels.append(k)
        k *= 2
    return [*levels, d_sae]


def resolve_msae_levels(cfg: Any, d_sae: int) -> list[int]:
    """One entry in cfg.k_levels (or none: cfg.k) is a start to double from; several are used as given."""
    if cfg.k_levels is not None and len(cfg.k_levels) > 1:
        return _check_levels([int(k) for k in cfg.k_levels], d_sae, "k_levels")
    start = cfg.k_levels[0] if cfg.k_levels else cfg.k
    return msae_k_levels(start, d_sae)


def msae_level_weights(n_levels: int, mode: str) -> list[float]:
    """UW: w_j = 1; RW: w_j = m − j + 1 (largest on the smallest k). Normalised to sum to 1."""
    if mode == "uniform":
        raw = [1.0] * n_levels
    elif mode == "reverse":
        raw = [float(n_levels - j) for j in range(n_levels)]
    else:
        raise ConfigError(f"sae.level_weights must be 'uniform' or 'reverse', got {mode!r}")
    total = sum(raw)
    return [w / total for w in raw]


def _check_levels(levels: list[int], d_sae: int, name: str) -> list[int]:
    increasing = all(b > a for a, b in zip(levels, levels[1:], strict=False))
    if not levels or levels[0] <= 0 or levels[-1] > d_sae or not increasing:
        raise ConfigError(
            f"sae.{name} must be strictly increasing values in [1, d_sae={d_sae}]; got {levels}"
        )
    return levels


# ---------------------------------------------------------------------------------------- selection


@dataclass
class SortedCode:
    """Per-row selected latents sorted by pre-activation (descending); entry e has rank rank[e] in its row."""

    code: SparseCode
    """Values carry the gradient (ReLU, plus soft cap for MSAE); entries grouped by row, sorted in it."""
    ranks: Int[Tensor, " nnz"]
    aux_pre_acts: Float[Tensor, "batch n_aux"] | None


def encode_sorted(
    sae: Sae,
    x: Float[Tensor, "batch d_in"],
    k_max: int,
    *,
    all_positive: bool = False,
    aux_columns: Int[Tensor, " n_aux"] | None = None,
    cap: float | None = None,
) -> SortedCode:
    """Top-k_max entries of each row of h, sorted; with `all_positive`, every other h > 0 entry is appended
    (ranks ≥ k_max, unsorted — only needed when the last level is the whole dictionary, as in MSAE)."""
    x = x.to(sae.W_enc.dtype)
    batch = x.shape[0]
    with torch.no_grad():
        h = sae.dense_pre_acts(x, reuse_buffer=sae.training)
        vals, idx = row_topk(h, k_max, sorted=True)
        rows = torch.arange(batch, device=x.device).repeat_interleave(k_max)
        ranks = torch.arange(k_max, device=x.device).repeat(batch)
        idx, vals = idx.reshape(-1), vals.reshape(-1)
        if all_positive and k_max < h.shape[1]:
            rows, idx, vals, ranks = _append_other_positives(h, idx, rows, vals, ranks, k_max)
        aux = h.index_select(1, aux_columns) if aux_columns is not None else None
        del h  # a fresh h (eval, GPU) is the step's biggest buffer: free it before backward
    pre = encode_selected(x, sae.W_enc, sae.b_enc, sae.b_dec, rows, idx, vals)
    values = torch.relu(pre) if cap is None else soft_cap(torch.relu(pre), cap)
    return SortedCode(SparseCode(values, idx, offsets_from_rows(rows, batch), sae.d_sae, rows), ranks, aux)


def encode_levels(
    sae: Sae,
    x: Float[Tensor, "batch d_in"],
    levels: list[int],
    *,
    aux_columns: Int[Tensor, " n_aux"] | None = None,
    cap: float | None = None,
) -> SortedCode:
    """The sorted code covering every level. A last level of d_sae means "every positive latent" (TopK at
    k = n is ReLU), so only the levels below it are sorted and the remaining positives are appended."""
    whole = levels[-1] == sae.d_sae
    k_sorted = (levels[-2] if len(levels) > 1 else 0) if whole else levels[-1]
    return encode_sorted(sae, x, k_sorted, all_positive=whole, aux_columns=aux_columns, cap=cap)


def _append_other_positives(h, idx, rows, vals, ranks, k_max):
    """Add every positive h entry outside the top-k_max, regrouped so each row's entries stay together."""
    rest = h.clone()
    rest.view(-1)[rows * h.shape[1] + idx] = float("-inf")
    extra_rows, extra_idx = torch.nonzero(rest > 0, as_tuple=True)
    all_rows = torch.cat([rows, extra_rows])
    order = torch.argsort(all_rows, stable=True)  # stable: the sorted top-k_max stays first in its row
    extra_ranks = torch.full_like(extra_rows, k_max)
    return (
        all_rows[order],
        torch.cat([idx, extra_idx])[order],
        torch.cat([vals, h[extra_rows, extra_idx]])[order],
        torch.cat([ranks, extra_ranks])[order],
    )


def level_block_sums(
    sorted_code: SortedCode, levels: list[int], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "n_levels batch d_in"]:
    """Block g sums the entries ranked in [k_{g−1}, k_g), so level g's code is blocks 0..g (one decode).
    Entries ranked beyond the last level are ignored."""
    code = sorted_code.code
    bounds = torch.tensor(levels, dtype=sorted_code.ranks.dtype, device=sorted_code.ranks.device)
    blocks = torch.bucketize(sorted_code.ranks, bounds, right=True)
    rows, indices, values = code.row_ids(), code.indices, code.values
    keep = blocks < len(levels)
    if not bool(keep.all()):
        rows, blocks, indices, values = rows[keep], blocks[keep], indices[keep], values[keep]
    return block_sums(indices, values, rows, blocks, len(levels), code.batch_size, W_dec)


def nested_level_reconstructions(
    sorted_code: SortedCode,
    levels: list[int],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"],
) -> Float[Tensor, "batch n_levels d_in"]:
    """x̂ at each k in `levels` (eval and tests; training uses the nested losses directly)."""
    sums = level_block_sums(sorted_code, levels, W_dec)
    return (sums.cumsum(0) + b_dec.float()).transpose(0, 1)
