"""Per-prefix and per-k reconstruction metrics for nested SAEs (algorithms.md §10 "per-prefix / per-k").

- Matryoshka (`prefix` kind): for each prefix width m_g, the FVU of the reconstruction that uses only
  latents [0, m_g) of the SAE's inference code, and the mean number of active latents below m_g.
- Multi-TopK / HierarchicalTopK / MSAE (`k` kind): for each budget k, the FVU of the top-k reconstruction
  (sorted per row, so supports are nested) and its mean L0 = mean over rows of min(k, #positive).

FVU = Σ_b ||x_b − x̂_b||² / Σ_b ||x_b − x̄||² with x̄ the mean of the evaluated rows, accumulated in fp64 over
all chunks (the same definition as `ReconstructionStats`). It is scale-free, so it is computed in the
SAE's normalised input space.

    levels = level_metrics(sae, x_rows, objective="matryoshka")   # rows: a tensor or an iterable of chunks
    levels["fvu"][0]                                              # FVU of the smallest prefix alone
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from saekit.errors import DataError

logger = logging.getLogger(__name__)

LEVEL_OBJECTIVES = {"matryoshka": "prefix", "multi_topk": "k", "hierarchical_topk": "k", "msae": "k"}
"""Objectives whose runs get level metrics in eval.json, and which kind."""
HIERARCHICAL_ALL_K_UP_TO = 64
"""HierarchicalTopK: report every k ≤ K up to this K; beyond it, powers of two plus K."""


def default_levels(sae: Any, objective: str) -> list[int]:
    """Prefix widths (matryoshka) or k values (multi-k objectives) to report for `objective`."""
    from saekit.train.matryoshka import resolve_prefixes
    from saekit.train.multik import multi_topk_levels, resolve_msae_levels

    cfg, n = sae.cfg, sae.d_sae
    if objective == "matryoshka":
        return resolve_prefixes(cfg, n)  # sampled runs: cfg.prefixes or the default n/16 … n grid
    if objective == "multi_topk":
        return multi_topk_levels(cfg, n)
    if objective == "msae":
        return resolve_msae_levels(cfg, n)
    if objective == "hierarchical_topk":
        K = cfg.k
        if K <= HIERARCHICAL_ALL_K_UP_TO:
            return list(range(1, K + 1))
        return sorted({2**i for i in range(K.bit_length()) if 2**i < K} | {K})
    raise ValueError(f"no level metrics for objective {objective!r}; choose from {sorted(LEVEL_OBJECTIVES)}")


@torch.no_grad()
def level_metrics(
    sae: Any,
    x_rows: Float[Tensor, "rows d_in"] | Iterable[Float[Tensor, "chunk d_in"]],
    *,
    objective: str | None = None,
    levels: list[int] | None = None,
) -> dict[str, Any]:
    """FVU and L0 per prefix width or per k over raw activation rows (a tensor or chunks of one).

    `objective` picks the kind and default levels; None means "matryoshka" when the SAE config lists
    prefixes and "hierarchical_topk" (every k ≤ cfg.k) otherwise. Inference-mode selection throughout.
    """
    if objective is None:
        objective = "matryoshka" if sae.cfg.prefixes is not None else "hierarchical_topk"
    kind = LEVEL_OBJECTIVES.get(objective)
    if kind is None:
        raise ValueError(f"no level metrics for {objective!r}; use one of {sorted(LEVEL_OBJECTIVES)}")
    levels = list(levels) if levels is not None else default_levels(sae, objective)
    chunks = [x_rows] if isinstance(x_rows, Tensor) else x_rows
    acc = _Accumulator(len(levels), sae.d_in)
    for chunk in chunks:
        x = sae.scale_input(chunk.to(sae.W_dec.device))
        if kind == "prefix":
            x_hats, l0 = _prefix_levels(sae, x, levels)
        else:
            x_hats, l0 = _k_levels(sae, x, levels)
        acc.update(x, x_hats, l0)
    if acc.rows == 0:
        raise DataError("level_metrics got no rows; pass at least one activation row")
    fvu = acc.fvu()
    key = "widths" if kind == "prefix" else "k"
    return {
        "kind": kind,
        "objective": objective,
        key: levels,
        "fvu": fvu,
        "l0": (acc.l0 / acc.rows).tolist(),
        "rows": acc.rows,
        "definition": (
            "FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over these rows; "
            + (
                "x_hat uses only latents < width of the inference code; l0 counts active latents < width"
                if kind == "prefix"
                else "x_hat uses the k largest pre-activations of each row; l0 = mean min(k, #positive)"
            )
        ),
    }


def _prefix_levels(sae: Any, x: Tensor, widths: list[int]) -> tuple[Tensor, Tensor]:
    from saekit.train.matryoshka import prefix_blocks, prefix_reconstructions

    code = sae.encode(x, training=False)
    x_hats = prefix_reconstructions(code, sae.W_dec, sae.b_dec, widths)
    blocks = prefix_blocks(code.indices, widths)
    active = (code.values > 0).double()
    per_block = torch.zeros(len(widths), dtype=torch.float64, device=x.device).index_add_(0, blocks, active)
    return x_hats, per_block.cumsum(0)


def _k_levels(sae: Any, x: Tensor, levels: list[int]) -> tuple[Tensor, Tensor]:
    from saekit.train.multik import encode_levels, nested_level_reconstructions

    cap = getattr(sae.activation, "soft_cap", None)
    sorted_code = encode_levels(sae, x, levels, cap=cap)
    x_hats = nested_level_reconstructions(sorted_code, levels, sae.W_dec, sae.b_dec)
    active = sorted_code.code.values > 0
    l0 = torch.stack([(active & (sorted_code.ranks < k)).sum() for k in levels]).double()
    return x_hats, l0


class _Accumulator:
    """fp64 running sums: per-level squared error and L0, plus Σx and Σ||x||² for the FVU denominator."""

    def __init__(self, n_levels: int, d_in: int) -> None:
        self.sq_err = torch.zeros(n_levels, dtype=torch.float64)
        self.l0 = torch.zeros(n_levels, dtype=torch.float64)
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq = 0.0
        self.rows = 0

    def update(self, x: Tensor, x_hats: Tensor, l0: Tensor) -> None:
        xd = x.double()
        self.sq_err += (x_hats.double() - xd.unsqueeze(1)).pow(2).sum(dim=(0, 2)).cpu()
        self.l0 += l0.cpu()
        self.sum_x += xd.sum(0).cpu()
        self.sum_sq += float(xd.pow(2).sum())
        self.rows += x.shape[0]

    def fvu(self) -> list[float | None]:
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.rows
        if not total_var > 0:
            return [None] * len(self.sq_err)  # constant rows: FVU undefined (JSON null)
        return (self.sq_err / total_var).tolist()
