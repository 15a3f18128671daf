"""Nested-prefix math shared by Matryoshka and the multi-k objectives (algorithms.md §3.1-3.2, §3.3).

Prefix widths (fixed from the config, or sampled per step as in Nabeshima) and the one-decode nested
losses: every selected entry goes into a bag (block, row), block g holding latents [m_{g−1}, m_g);
`sparse_decode` sums each bag, and the nested losses accumulate the block sums in order
(residual r_g = r_{g−1} − s_g), so the G prefix reconstructions are never materialised.

    widths = resolve_prefixes(None, sae.d_sae)                           # e.g. [64, 128, 256, 512, 1024]
    losses = prefix_losses(x, code, sae.W_dec, sae.b_dec, widths, mse_scale)   # [G] FVUs, one decode
    x_hats = prefix_reconstructions(code, sae.W_dec, sae.b_dec, widths)       # [B, G, d] (eval, tests)
"""

from __future__ import annotations

import functools

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saekit.errors import ConfigError
from saekit.kernels import sparse_decode
from saekit.types import SparseCode, offsets_from_counts

SAMPLED_PARETO_POWER = 0.5
"""Sampled cut points: P(cut ≤ ℓ) grows like ℓ^0.5, so short prefixes are drawn most often (Nabeshima)."""


# ---------------------------------------------------------------------------------------- prefixes


def resolve_prefixes(prefixes: tuple[int, ...] | None, d_sae: int) -> list[int]:
    """Fixed prefix widths: `prefixes`, else [n/16, n/8, n/4, n/2, n] (widths < 1 and repeats dropped).

    A list that stops short of d_sae gets d_sae appended (SAELens does the same) so the full dictionary
    is always trained; anything not strictly increasing or wider than d_sae is a ConfigError.
    """
    if prefixes is None:
        widths = sorted({d_sae // div for div in (16, 8, 4, 2)} - {0}) + [d_sae]
        return [w for w in widths if w < d_sae] + [d_sae]
    widths = [int(w) for w in prefixes]
    if any(w <= 0 for w in widths) or any(b <= a for a, b in zip(widths, widths[1:], strict=False)):
        raise ConfigError(f"sae.prefixes must be strictly increasing positive widths, got {list(widths)}")
    if widths[-1] > d_sae:
        raise ConfigError(f"sae.prefixes: width {widths[-1]} exceeds d_sae={d_sae}; end the list at {d_sae}")
    return widths if widths[-1] == d_sae else [*widths, d_sae]


def resolve_prefix_weights(prefix_weights: tuple[float, ...] | None, n_prefixes: int) -> list[float]:
    """`prefix_weights` (one per prefix, used as given), else 1/G each."""
    if prefix_weights is None:
        return [1.0 / n_prefixes] * n_prefixes
    weights = [float(w) for w in prefix_weights]
    if len(weights) != n_prefixes or any(w < 0 for w in weights):
        raise ConfigError(
            f"sae.prefix_weights needs {n_prefixes} non-negative weights (one per prefix width, d_sae "
            f"included), got {weights}"
        )
    return weights


def sample_prefixes(
    d_sae: int, n_prefixes: int, min_length: int = 1, generator: torch.Generator | None = None
) -> list[int]:
    """Nabeshima-style random widths: n_prefixes − 1 distinct cuts in [min_length, d_sae − 1], plus d_sae.

    Cut ℓ is drawn with pmf(ℓ) = F(ℓ) − F(ℓ − 1), F(ℓ) = ((ℓ − min_length + 1) / (d_sae − min_length))^0.5,
    which decreases in ℓ (short prefixes favoured). Distinct cuts come from multinomial sampling without
    replacement; their number is capped by how many widths exist. Returned sorted, last = d_sae.
    """
    min_length = max(1, int(min_length))
    if min_length > d_sae:
        raise ConfigError(f"sae.min_prefix_length={min_length} exceeds d_sae={d_sae}; lower it")
    span = d_sae - min_length  # candidate cuts: min_length .. d_sae − 1
    n_cuts = min(max(n_prefixes - 1, 0), span)
    if n_cuts == 0:
        return [d_sae]
    picks = torch.multinomial(_cut_pmf(span), n_cuts, replacement=False, generator=generator)
    cuts = sorted((picks + min_length).tolist())
    return [*cuts, d_sae]


@functools.lru_cache(maxsize=8)
def _cut_pmf(span: int) -> Float[Tensor, " span"]:
    """pmf[j] = ((j + 1)/span)^0.5 − (j/span)^0.5 (fp64 differences; cached: the same every step)."""
    steps = torch.arange(0, span + 1, dtype=torch.float64) / span
    return steps.pow(SAMPLED_PARETO_POWER).diff().float()


# ---------------------------------------------------------------------------------------- decoding


def block_sums(
    indices: Int[Tensor, " nnz"],
    values: Float[Tensor, " nnz"],
    rows: Int[Tensor, " nnz"],
    blocks: Int[Tensor, " nnz"],
    n_blocks: int,
    batch: int,
    W_dec: Float[Tensor, "d_sae d_in"],
) -> Float[Tensor, "n_blocks batch d_in"]:
    """out[g, b] = Σ over entries of row b in block g of values·W_dec[indices], all blocks in ONE decode.

    Entries (grouped by row, as in every SparseCode) are regrouped block-major into G·B bags by a stable
    sort on the block id (each block keeps its row order); a single `sparse_decode` then sums
    every bag — the same nnz·d work and one dense W_dec gradient as a plain decode. Block-major output
    makes each out[g] a contiguous [B, d] slab for the nested losses.
    """
    # stable: rows stay in order inside each block (measured 1 ms for 131k entries; per-block nonzero 130 ms)
    order = torch.sort(blocks, stable=True).indices
    offsets = offsets_from_counts(torch.bincount(blocks * batch + rows, minlength=n_blocks * batch))
    sums = sparse_decode(indices[order], values[order], offsets, W_dec, None)
    return sums.view(n_blocks, batch, -1)


class _NestedSquaredErrors(torch.autograd.Function):
    """err[g] = Σ_{b,d} (e0 − Σ_{h≤g} s_h)² for block sums s [G, B, d], e0 = x − b_dec, in 2G passes over
    [B, d] forward and about 3G backward, without materialising the G partial reconstructions (measured:
    the cumsum/sub/pow chain over [B, G, d] cost ~2x the whole decode at B=4096, d=768, G=5)."""

    @staticmethod
    def forward(ctx, e0, sums):
        residual = e0.clone()
        errors = e0.new_empty(sums.shape[0])
        for g in range(sums.shape[0]):
            residual.sub_(sums[g])
            flat = residual.view(-1)
            errors[g] = torch.dot(flat, flat)
        ctx.save_for_backward(residual, sums)
        return errors

    @staticmethod
    def backward(ctx, grad):
        residual, sums = ctx.saved_tensors
        residual = residual.clone()  # walks back from r_G to r_0, so the saved tensor stays intact
        acc = torch.zeros_like(residual)  # ∂/∂r_g of Σ_{h≥g} grad_h·||r_h||²
        grad_sums = torch.empty_like(sums)
        for g in range(sums.shape[0] - 1, -1, -1):
            acc.addcmul_(residual, grad[g] * 2)  # 0-dim tensor: no host sync on GPU
            torch.neg(acc, out=grad_sums[g])
            residual.add_(sums[g])
        return acc, grad_sums


def nested_losses(
    x: Float[Tensor, "batch d_in"],
    b_dec: Float[Tensor, " d_in"],
    sums: Float[Tensor, "n_blocks batch d_in"],
    mse_scale: float,
) -> Float[Tensor, " n_blocks"]:
    """L_g = mse_scale · mean_{b,d}(x − b_dec − Σ_{h≤g} s_h)²: level g's FVU with the fixed denominator."""
    e0 = x.float() - b_dec.float()
    return _NestedSquaredErrors.apply(e0, sums.float()) * (mse_scale / x.numel())


@torch.no_grad()
def nested_residual(
    x: Float[Tensor, "batch d_in"], b_dec: Float[Tensor, " d_in"], sums: Float[Tensor, "n batch d_in"], g: int
) -> Float[Tensor, "batch d_in"]:
    """x − x̂_g (no grad), e.g. the residual AuxK models."""
    return x.float() - b_dec.float() - sums[: g + 1].sum(0)


def prefix_blocks(indices: Int[Tensor, " nnz"], prefixes: list[int]) -> Int[Tensor, " nnz"]:
    """Block id g of each latent: the first prefix with indices < m_g."""
    bounds = torch.tensor(prefixes[:-1], dtype=indices.dtype, device=indices.device)
    return torch.bucketize(indices, bounds, right=True)


def prefix_block_sums(
    code: SparseCode, W_dec: Float[Tensor, "d_sae d_in"], prefixes: list[int]
) -> Float[Tensor, "n_prefixes batch d_in"]:
    """Per-block decodes: block g holds latents [m_{g−1}, m_g); the last prefix must be d_sae."""
    assert prefixes[-1] == code.d_sae, "the last prefix must be the full dictionary"
    blocks = prefix_blocks(code.indices, prefixes)
    return block_sums(
        code.indices, code.values, code.row_ids(), blocks, len(prefixes), code.batch_size, W_dec
    )


def prefix_reconstructions(
    code: SparseCode, W_dec: Float[Tensor, "d_sae d_in"], b_dec: Float[Tensor, " d_in"], prefixes: list[int]
) -> Float[Tensor, "batch n_prefixes d_in"]:
    """x̂_g = b_dec + Σ_{i < m_g} z_i W_dec[i] for every prefix width m_g, fp32 (eval and tests)."""
    sums = prefix_block_sums(code, W_dec, prefixes)
    return (sums.cumsum(0) + b_dec.float()).transpose(0, 1)


def prefix_losses(
    x: Float[Tensor, "batch d_in"],
    code: SparseCode,
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"],
    prefixes: list[int],
    mse_scale: float,
) -> Float[Tensor, " n_prefixes"]:
    """[L_g] for every prefix (see `nested_losses`), from one decode."""
    return nested_losses(x, b_dec, prefix_block_sums(code, W_dec, prefixes), mse_scale)
