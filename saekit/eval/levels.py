"""Per-level reconstruction metrics for nested SAEs (algorithms.md §10 "per-prefix / per-k").

What a level is comes from the method's declaration (`Method.levels`, a `LevelReport`): Matryoshka reports
prefix widths (FVU using only latents < m_g of the inference code), Multi-TopK / HierarchicalTopK / MSAE
report budgets k (FVU of the top-k reconstruction). This module only accumulates: FVU = Σ_b ||x_b − x̂_b||² /
Σ_b ||x_b − x̄||² with x̄ the mean of the evaluated rows, in fp64 over all chunks (the same definition as
`ReconstructionStats`), computed in the SAE's normalised input space (FVU is scale-free).

    levels = level_metrics(sae, x_rows)               # rows: a tensor or an iterable of chunks
    levels["fvu"][0]                                  # e.g. FVU of the smallest prefix alone
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from saekit.errors import DataError
from saekit.sae import LevelReport, get_method

logger = logging.getLogger(__name__)


def level_report(sae: Any) -> LevelReport | None:
    """The SAE's method's level report, or None when the method is not nested."""
    return get_method(sae.cfg.method).levels


@torch.no_grad()
def level_metrics(
    sae: Any,
    x_rows: Float[Tensor, "rows d_in"] | Iterable[Float[Tensor, "chunk d_in"]],
    *,
    levels: list[int] | None = None,
    report: LevelReport | None = None,
) -> dict[str, Any]:
    """FVU and L0 per level over raw activation rows (a tensor or chunks of one), inference-mode selection.

    `report` defaults to the SAE's method's (a ValueError when the method reports no levels); `levels` to
    the report's own list for this SAE.
    """
    report = report or level_report(sae)
    if report is None:
        raise ValueError(f"method {sae.cfg.method!r} reports no per-level metrics (it is not nested)")
    levels = list(levels) if levels is not None else report.levels(sae)
    chunks = [x_rows] if isinstance(x_rows, Tensor) else x_rows
    acc = _Accumulator(len(levels), sae.d_in)
    for chunk in chunks:
        x = sae.scale_input(chunk.to(sae.W_dec.device))
        x_hats, l0 = report.reconstruct(sae, x, levels)
        acc.update(x, x_hats, l0)
    if acc.rows == 0:
        raise DataError("level_metrics got no rows; pass at least one activation row")
    return {
        "kind": report.kind,
        "method": sae.cfg.method,
        "levels": levels,
        "fvu": acc.fvu(),
        "l0": (acc.l0 / acc.rows).tolist(),
        "rows": acc.rows,
        "definition": "FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over these rows; "
        + report.definition,
    }


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
