"""Objectives nested over k (algorithms.md §1.4, §3.3, §6): Multi-TopK, HierarchicalTopK and MSAE.

All three share one encoder GEMM and one selection: the top-K entries of every row, sorted by value, so
the code at budget k is the first k columns (supports are nested by construction). Gradients reach the
encoder only through `encode_selected` on the selected entries; decodes go through `sparse_decode`.
Level lists and that selection are in `saekit.sae.multik_levels`; this module holds the Gram-identity loss
of HierarchicalTopK, the three objectives, MSAE's soft-capped TopK and the three declarations.

- `multi_topk` (Gao et al. §5.3): L = L(k) + L(4k)/8 (levels = k_levels or (k, 4k); weight 1 on the
  first level, 1/8 on each later one), AuxK on the residual of the k-level reconstruction.
- `hierarchical_topk` (Balagansky et al.): L_H = (1/K)·Σ_{j=1..K} L(j) with K = k, computed through
  the Gram-matrix identity of §6.2 in row chunks, so memory is B·K² plus one chunk·K·d (never B·K·d);
  AuxK on the residual of the full top-K reconstruction.
- `msae` (Zaigrajew et al.): levels doubling from k_levels[0] (default k) up to d_sae, each with
  SoftCap(u) = 30·tanh(u/30) after ReLU, loss Σ_j w_j L(k_j) with UW/RW weights normalised; no AuxK.
  Its inference rule is TopK(k) with the same cap.

Every L(·) is an FVU against the fixed denominator: mse_scale · mean_{b,d}(x − x̂)², as in `topk_auxk`.
At inference all three are a per-row TopK whose k is the budget.

    sae = Sae(d_in, SaeConfig.make("hierarchical_topk", k=32))
    out = make_objective(sae.cfg)(sae, batch, dead_mask=tracker.dead_mask(), mse_scale=s)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saekit.sae.config import KParams, TopKParams
from saekit.sae.method import LevelReport, Method, register_method
from saekit.sae.methods.topk import TopK
from saekit.sae.model import Sae
from saekit.sae.multik_levels import (
    SOFT_CAP,
    SortedCode,
    encode_levels,
    encode_sorted,
    level_block_sums,
    msae_level_weights,
    multi_topk_levels,
    nested_level_reconstructions,
    resolve_msae_levels,
    soft_cap,
)
from saekit.sae.objective import Objective, StepOutput, aux_settings, auxk_loss, dead_columns, firing
from saekit.sae.prefixes import nested_losses, nested_residual
from saekit.types import Batch, SparseCode

logger = logging.getLogger(__name__)

MULTI_TOPK_TAIL_WEIGHT = 1 / 8
"""Gao et al.: the 4k term enters with weight 1/8."""
GRAM_CHUNK_ELEMENTS = 1 << 22
"""Rows per Gram chunk are chosen so one chunk's gathered decoder rows hold at most this many floats."""
HIERARCHICAL_ALL_K_UP_TO = 64
"""HierarchicalTopK evaluation: report every k ≤ K up to this K; beyond it, powers of two plus K."""


@dataclass(frozen=True)
class MultiTopKParams(TopKParams):
    k_levels: tuple[int, ...] | None = None
    """The k values trained; null: (k, 4k)."""


@dataclass(frozen=True)
class MsaeParams(KParams):
    k_levels: tuple[int, ...] | None = None
    """One value: the start of the doubling list (null: k); several: used as given (the last may be d_sae)."""
    level_weights: Literal["uniform", "reverse"] = "uniform"
    """Level weights: UW (uniform) or RW (largest weight on the smallest k)."""


class TopKSoftCap(TopK):
    """TopK followed by ReLU and the MSAE soft cap 30·tanh(u/30) — the inference form of `msae`."""

    soft_cap: float = SOFT_CAP

    def values(self, pre: Tensor, code: SparseCode, sae: Sae) -> Tensor:
        return soft_cap(torch.relu(pre), self.soft_cap)


# ---------------------------------------------------------------------------------------- Gram identity


def hierarchical_loss(
    x: Float[Tensor, "batch d_in"],
    b_dec: Float[Tensor, " d_in"],
    W_dec: Float[Tensor, "d_sae d_in"],
    indices: Int[Tensor, "batch k"],
    values: Float[Tensor, "batch k"],
    weights: Float[Tensor, " k"],
) -> Float[Tensor, ""]:
    """Σ_b Σ_j weights[j]·||x_b − x̂_b^(j)||² with x̂^(j) = b_dec + Σ_{i≤j} v_i·W_dec[idx_i] (columns in rank
    order), without ever holding the B·K·d partial reconstructions (algorithms.md §6.2).

    With e0 = x − b_dec, p_i = ⟨e0, d_i⟩, G_ii' = ⟨d_i, d_i'⟩ and a_i = Σ_{j≥i} weights[j]:
    Σ_j w_j||e_j||² = (Σw)||e0||² − 2 Σ_i a_i v_i p_i + Σ_{i,i'} a_max(i,i') v_i v_i' G_ii'
    (checked against `hierarchical_loss_direct` in tests, values and gradients).
    Differentiable w.r.t. b_dec, W_dec and values; rows are processed in chunks in forward and backward.
    """
    e0 = x.float() - b_dec.float()
    w = weights.float()
    a = w.flip(0).cumsum(0).flip(0)
    return _GramHierarchicalLoss.apply(e0, W_dec, indices, values.float(), a, w.sum())


class _GramHierarchicalLoss(torch.autograd.Function):
    """Per row chunk: gather D = W_dec[idx] ([c, K, d]), then p = D e0 and G = D Dᵀ. The weighted Gram
    matrices are kept for backward (B·K² floats); D is gathered again there instead of saved (B·K·d).
    Backward: ∂v = 2(A⊙G)v − 2a⊙p, ∂D = 2(A⊙vvᵀ)D − 2(a⊙v)e0ᵀ, ∂e0 = 2(Σw)e0 − 2Dᵀ(a⊙v)."""

    @staticmethod
    def forward(ctx, e0, W_dec, indices, values, a, w_total):
        A = _pair_weights(a)
        K = indices.shape[1]
        weighted = e0.new_empty(e0.shape[0], K, K)
        proj = e0.new_empty(e0.shape[0], K)
        for lo, hi in _chunks(e0.shape[0], K, e0.shape[1]):
            D = W_dec.float()[indices[lo:hi]]
            torch.bmm(D, D.transpose(1, 2), out=weighted[lo:hi]).mul_(A)
            proj[lo:hi] = torch.bmm(D, e0[lo:hi].unsqueeze(2)).squeeze(2)
        ctx.save_for_backward(e0, W_dec, indices, values, a, w_total, weighted, proj)
        quad = torch.bmm(weighted, values.unsqueeze(2)).squeeze(2).mul_(values).sum()
        return w_total * e0.pow(2).sum() - 2 * (a * values * proj).sum() + quad

    @staticmethod
    def backward(ctx, grad):
        e0, W_dec, indices, values, a, w_total, weighted, proj = ctx.saved_tensors
        A = _pair_weights(a)
        av = a * values
        g_v = 2 * torch.bmm(weighted, values.unsqueeze(2)).squeeze(2) - 2 * a * proj
        g_e0 = 2 * w_total * e0
        g_W = torch.zeros(W_dec.shape, dtype=torch.float32, device=W_dec.device)
        for lo, hi in _chunks(e0.shape[0], indices.shape[1], e0.shape[1]):
            idx, v, e, c_av = indices[lo:hi], values[lo:hi], e0[lo:hi], av[lo:hi]
            D = W_dec.float()[idx]
            mix = (v.unsqueeze(2) * v.unsqueeze(1)).mul_(A)  # A_ii' v_i v_i'
            g_D = torch.bmm(mix, D).baddbmm_(c_av.unsqueeze(2), e.unsqueeze(1), alpha=-1).mul_(2)
            g_e0[lo:hi] -= 2 * torch.bmm(c_av.unsqueeze(1), D).squeeze(1)
            g_W.index_add_(0, idx.reshape(-1), g_D.reshape(-1, D.shape[2]))
        return grad * g_e0, (grad * g_W).to(W_dec.dtype), None, grad * g_v, None, None


def _pair_weights(a: Float[Tensor, " k"]) -> Float[Tensor, "k k"]:
    """A_ii' = a_max(i, i')."""
    pos = torch.arange(a.shape[0], device=a.device)
    return a[torch.maximum(pos.unsqueeze(1), pos.unsqueeze(0))]


def _chunks(batch: int, k: int, d: int):
    step = max(1, GRAM_CHUNK_ELEMENTS // max(1, k * d))
    for lo in range(0, batch, step):
        yield lo, min(batch, lo + step)


def hierarchical_loss_direct(
    x: Float[Tensor, "batch d_in"],
    b_dec: Float[Tensor, " d_in"],
    W_dec: Float[Tensor, "d_sae d_in"],
    indices: Int[Tensor, "batch k"],
    values: Float[Tensor, "batch k"],
    weights: Float[Tensor, " k"],
) -> Float[Tensor, ""]:
    """Reference for `hierarchical_loss`: the explicit cumulative sum over a [B, K, d] tensor (tests only)."""
    partial = (values.float().unsqueeze(2) * W_dec.float()[indices]).cumsum(1) + b_dec.float()
    return (weights.float() * (x.float().unsqueeze(1) - partial).pow(2).sum(2)).sum()


# ---------------------------------------------------------------------------------------- objectives


class MultiTopKObjective(Objective):
    """L = L(k) + Σ_{later levels} L(k_j)/8 (default levels (k, 4k)) + aux_coef·AuxK on the k residual."""

    def __call__(
        self, sae: Sae, batch: Batch, *, dead_mask: Bool[Tensor, " d_sae"] | None, mse_scale: float
    ) -> StepOutput:
        levels = multi_topk_levels(self.params, sae.d_sae)
        x = batch.acts.to(sae.W_dec.dtype)
        dead_idx = _aux_columns(self.params, sae, dead_mask)
        sc = encode_sorted(sae, x, levels[-1], aux_columns=dead_idx)
        sums = level_block_sums(sc, levels, sae.W_dec)
        per_level = nested_losses(x, sae.b_dec, sums, mse_scale)
        weights = torch.tensor([1.0] + [MULTI_TOPK_TAIL_WEIGHT] * (len(levels) - 1), device=x.device)
        main = (weights * per_level).sum()
        residual = nested_residual(x, sae.b_dec, sums, 0)
        aux = _aux(self.params, sae, x, residual, sc.aux_pre_acts, dead_idx)
        return _level_output(self.params, main, aux, per_level, levels, levels[0], x, residual, sc, dead_mask)


class HierarchicalTopKObjective(Objective):
    """L_H = (1/K)·Σ_{j=1..K} mse_scale·mean_{b,d}(x − x̂^(j))² with K = k, plus aux_coef·AuxK on the
    residual of the full top-K reconstruction."""

    def __call__(
        self, sae: Sae, batch: Batch, *, dead_mask: Bool[Tensor, " d_sae"] | None, mse_scale: float
    ) -> StepOutput:
        K = self.params.k
        x = batch.acts.to(sae.W_dec.dtype)
        B, d = x.shape
        dead_idx = _aux_columns(self.params, sae, dead_mask)
        sc = encode_sorted(sae, x, K, aux_columns=dead_idx)
        idx, values = sc.code.indices.view(B, K), sc.code.values.view(B, K)
        weights = torch.full((K,), mse_scale / (K * B * d), device=x.device)
        main = hierarchical_loss(x, sae.b_dec, sae.W_dec, idx, values, weights)
        with torch.no_grad():  # one more decode for the logged ends of the hierarchy (§6.5: monitor both)
            levels = [1, K] if K > 1 else [1]
            sums = level_block_sums(_detached(sc), levels, sae.W_dec)
            per_level = nested_losses(x, sae.b_dec, sums, mse_scale)
            residual = nested_residual(x, sae.b_dec, sums, len(levels) - 1)
        aux = _aux(self.params, sae, x, residual, sc.aux_pre_acts, dead_idx)
        return _level_output(self.params, main, aux, per_level, levels, K, x, residual, sc, dead_mask)


class MsaeObjective(Objective):
    """Σ_j w_j·L(k_j) over the doubling k list with SoftCap values; UW/RW weights sum to 1; no AuxK."""

    def __call__(
        self, sae: Sae, batch: Batch, *, dead_mask: Bool[Tensor, " d_sae"] | None, mse_scale: float
    ) -> StepOutput:
        levels = resolve_msae_levels(self.params, sae.d_sae)
        weights = torch.tensor(msae_level_weights(len(levels), self.params.level_weights))
        x = batch.acts.to(sae.W_dec.dtype)
        sc = encode_levels(sae, x, levels, cap=SOFT_CAP)
        sums = level_block_sums(sc, levels, sae.W_dec)
        per_level = nested_losses(x, sae.b_dec, sums, mse_scale)
        main = (weights.to(x.device) * per_level).sum()
        main_k = self.params.k if self.params.k in levels else levels[0]
        residual = nested_residual(x, sae.b_dec, sums, levels.index(main_k))
        aux = torch.zeros((), device=x.device)
        return _level_output(self.params, main, aux, per_level, levels, main_k, x, residual, sc, dead_mask)


def _aux_columns(params, sae: Sae, dead_mask: Bool[Tensor, " d_sae"] | None) -> Int[Tensor, " n"] | None:
    k_aux, aux_coef = aux_settings(params, sae.d_in)
    return dead_columns(dead_mask, sae.W_dec.device) if k_aux > 0 and aux_coef > 0 else None


def _aux(params, sae, x, residual, aux_pre_acts, dead_idx) -> Tensor:
    if dead_idx is None:
        return torch.zeros((), device=x.device)
    return auxk_loss(sae, x, residual, aux_pre_acts, dead_idx, aux_settings(params, sae.d_in)[0])


def _detached(sc: SortedCode) -> SortedCode:
    return SortedCode(sc.code.with_values(sc.code.values.detach()), sc.ranks, None)


def _level_output(params, main, aux, per_level, levels, main_k, x, residual, sc, dead_mask) -> StepOutput:
    loss = main + aux_settings(params, x.shape[1])[1] * aux
    with torch.no_grad():
        sq_err = residual.pow(2)
        in_main = (sc.ranks < main_k) & (sc.code.values > 0)
        stats = torch.stack(
            [
                main,
                aux,
                loss,
                per_level[levels.index(main_k)],
                sq_err.mean(),
                sq_err.sum() / (x - x.mean(dim=0)).pow(2).sum(),
                in_main.sum() / max(x.shape[0], 1),
            ]
        ).detach()
        main_v, aux_v, total_v, fvu, mse, fvu_batch, l0 = stats.tolist()
        level_v = per_level.detach().tolist()
    metrics = {"fvu": fvu, "fvu_batch": fvu_batch, "mse": mse, "l0": l0}
    metrics.update({f"fvu_k{k}": v for k, v in zip(levels, level_v, strict=True)})
    metrics["n_dead"] = 0.0 if dead_mask is None else float(dead_mask.sum().item())
    return StepOutput(
        loss=loss,
        losses={"main": main_v, "aux": aux_v, "total": total_v},
        metrics=metrics,
        **firing(sc.code),
    )


# ---------------------------------------------------------------------------------------- declarations


def hierarchical_report_levels(sae: Sae) -> list[int]:
    K = sae.cfg.params.k
    if K <= HIERARCHICAL_ALL_K_UP_TO:
        return list(range(1, K + 1))
    return sorted({2**i for i in range(K.bit_length()) if 2**i < K} | {K})


def k_levels(sae: Sae, x: Tensor, levels: list[int]) -> tuple[Tensor, Tensor]:
    """x̂ from the top-k pre-activations of each row for every k in `levels` (nested supports), and the
    summed L0 = Σ_rows min(k, #positive) per level."""
    cap = getattr(sae.activation, "soft_cap", None)
    sorted_code = encode_levels(sae, x, levels, cap=cap)
    x_hats = nested_level_reconstructions(sorted_code, levels, sae.W_dec, sae.b_dec)
    active = sorted_code.code.values > 0
    l0 = torch.stack([(active & (sorted_code.ranks < k)).sum() for k in levels]).double()
    return x_hats, l0


def _k_report(levels) -> LevelReport:
    return LevelReport(
        kind="k",
        levels=levels,
        reconstruct=k_levels,
        definition="x_hat uses the k largest pre-activations of each row; l0 = mean min(k, #positive)",
    )


MULTI_TOPK = register_method(
    Method(
        name="multi_topk",
        params=MultiTopKParams,
        activation=TopK,
        objective=MultiTopKObjective,
        summary="Multi-TopK (Gao et al. 2024 §5.3): L(k) + L(4k)/8, usable at several k",
        levels=_k_report(lambda sae: multi_topk_levels(sae.cfg.params, sae.d_sae)),
    )
)
HIERARCHICAL_TOPK = register_method(
    Method(
        name="hierarchical_topk",
        params=TopKParams,
        activation=TopK,
        objective=HierarchicalTopKObjective,
        summary="HierarchicalTopK (Balagansky et al. 2025): one SAE good at every k ≤ K",
        levels=_k_report(hierarchical_report_levels),
    )
)
MSAE = register_method(
    Method(
        name="msae",
        params=MsaeParams,
        activation=TopKSoftCap,
        objective=MsaeObjective,
        summary="MSAE (Zaigrajew et al. 2025): nested k levels doubling to d_sae, soft-capped values",
        levels=_k_report(lambda sae: resolve_msae_levels(sae.cfg.params, sae.d_sae)),
    )
)
