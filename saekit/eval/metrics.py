"""Streaming reconstruction and sparsity metrics for SAE evaluation (algorithms.md §10).

Accumulators take one batch at a time, keep fp64 running sums, and return plain JSON-serialisable dicts,
so a metric over a million tokens is exact regardless of how the rows were batched.

    stats = ReconstructionStats(d_sae=sae.d_sae, dense_threshold=0.1)
    for x in batches: stats.update(x, sae.reconstruct(x), sae.encode(x))
    result = stats.compute()  # {"fvu": ..., "l0_mean": ..., "dead_fraction": ..., ...}
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from saekit.errors import DataError
from saekit.types import SparseCode

logger = logging.getLogger(__name__)

DENSITY_BINS = 100
DENSITY_RANGE = (-10.0, 0.0)
DENSITY_EPS = 1e-10
"""freq == 0 maps to log10(1e-10) = -10, the left edge, so dead latents land in the first bin."""


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf; an undefined ratio (e.g. 0/0 on constant data) is reported as null."""
    return value if math.isfinite(value) else None


def safe_ratio(num: float, den: float) -> float | None:
    return _finite_or_none(num / den) if den != 0 else None


class SparsityStats:
    """Per-token L0 and per-latent firing counts over an eval set.

    A latent "fires" on a token when its code value is > 0 (entries stored with value 0, which some
    selections emit, do not count), matching `SparseCode.l0_per_row`.
    """

    def __init__(self, d_sae: int, dense_threshold: float = 0.1) -> None:
        if d_sae <= 0:
            raise ValueError(f"d_sae must be positive, got {d_sae}")
        self.d_sae = d_sae
        self.dense_threshold = dense_threshold
        self.tokens = 0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.float64)
        self.l0_counts = torch.zeros(1, dtype=torch.float64)  # l0_counts[j] = tokens with exactly j active

    def update(self, code: SparseCode) -> None:
        if code.d_sae != self.d_sae:
            raise DataError(f"code has d_sae={code.d_sae} but these stats were built for {self.d_sae}")
        fired = code.values > 0
        latents = code.indices[fired].cpu()
        self.fire_counts += torch.bincount(latents, minlength=self.d_sae).double()
        l0 = code.l0_per_row().cpu()
        hist = torch.bincount(l0).double()
        if hist.numel() > self.l0_counts.numel():
            self.l0_counts = torch.nn.functional.pad(
                self.l0_counts, (0, hist.numel() - self.l0_counts.numel())
            )
        self.l0_counts[: hist.numel()] += hist
        self.tokens += code.batch_size

    def density(self) -> Float[Tensor, " d_sae"]:
        """Fraction of eval tokens on which each latent fired (fp64)."""
        return self.fire_counts / max(self.tokens, 1)

    def compute(self) -> dict[str, Any]:
        freq = self.density()
        l0_values = torch.arange(self.l0_counts.numel(), dtype=torch.float64)
        l0_mean = float((l0_values * self.l0_counts).sum()) / self.tokens if self.tokens else None
        counts, edges = log_density_histogram(freq)
        return {
            "tokens": self.tokens,
            "l0_mean": l0_mean,
            "l0_histogram": [int(c) for c in self.l0_counts.tolist()],
            "dead_fraction": float((freq == 0).double().mean()) if self.tokens else None,
            "dense_fraction": float((freq > self.dense_threshold).double().mean()) if self.tokens else None,
            "dense_threshold": self.dense_threshold,
            "alive_latents": int((self.fire_counts > 0).sum()),
            "log10_density_histogram": {"counts": counts, "edges": edges, "eps": DENSITY_EPS},
        }


def log_density_histogram(
    freq: Float[Tensor, " d_sae"], bins: int = DENSITY_BINS
) -> tuple[list[int], list[float]]:
    """Histogram of log10(freq + 1e-10) with `bins` equal bins over [-10, 0]; counts sum to d_sae.

    Values are clamped into the range first: freq = 1 gives log10(1 + 1e-10) > 0, which would otherwise
    fall off the right edge (torch.histc silently drops out-of-range values).
    """
    lo, hi = DENSITY_RANGE
    logs = torch.log10(freq.double() + DENSITY_EPS).clamp(lo, hi)
    index = ((logs - lo) / (hi - lo) * bins).floor().long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    return [int(c) for c in counts.tolist()], [round(float(e), 6) for e in edges.tolist()]


class ReconstructionStats:
    """Running sums for FVU, MSE, cosine, L2 ratio and relative reconstruction bias (+ optional sparsity).

    FVU uses the exact eval-set mean x̄: Σ‖x − x̄‖² = Σ‖x‖² − N‖x̄‖², with x̄ = Σx / N, all in fp64, so the
    result does not depend on batching (Gao et al.'s normalised MSE, summed before dividing).
    """

    def __init__(self, d_sae: int | None = None, dense_threshold: float = 0.1) -> None:
        self.rows = 0
        self.d_in: int | None = None
        self.sum_x: Tensor | None = None
        self.sums = dict.fromkeys(("x_sq", "err_sq", "xhat_sq", "dot", "cos", "l2_ratio"), 0.0)
        self.sparsity = SparsityStats(d_sae, dense_threshold) if d_sae is not None else None

    def update(
        self,
        x: Float[Tensor, "batch d_in"],
        x_hat: Float[Tensor, "batch d_in"],
        code: SparseCode | None = None,
    ) -> None:
        """Add one batch of inputs, their reconstructions and (optionally) their sparse codes."""
        if x.shape != x_hat.shape or x.ndim != 2:
            raise DataError(
                f"x and x_hat must both be [batch, d_in]; got {tuple(x.shape)} and {tuple(x_hat.shape)}"
            )
        if self.d_in is None:
            self.d_in = x.shape[1]
            self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
        elif x.shape[1] != self.d_in:
            raise DataError(f"rows have width {x.shape[1]} but earlier batches had {self.d_in}")
        x64, xh64 = x.detach().double().cpu(), x_hat.detach().double().cpu()
        if not (torch.isfinite(x64).all() and torch.isfinite(xh64).all()):
            raise DataError(
                "non-finite values in activations or reconstructions; check the cache and the SAE"
            )
        x_sq, xh_sq = (x64 * x64).sum(1), (xh64 * xh64).sum(1)
        dot = (x64 * xh64).sum(1)
        x_norm, xh_norm = x_sq.sqrt(), xh_sq.sqrt()
        # eps only guards all-zero rows; they contribute cos 0 and ratio 0 instead of NaN
        tiny = torch.finfo(torch.float64).tiny
        self.sums["x_sq"] += float(x_sq.sum())
        self.sums["err_sq"] += float(((x64 - xh64) ** 2).sum())
        self.sums["xhat_sq"] += float(xh_sq.sum())
        self.sums["dot"] += float(dot.sum())
        self.sums["cos"] += float((dot / (x_norm * xh_norm).clamp_min(tiny)).sum())
        self.sums["l2_ratio"] += float((xh_norm / x_norm.clamp_min(tiny)).sum())
        self.sum_x += x64.sum(0)
        self.rows += x.shape[0]
        if code is not None:
            if self.sparsity is None:
                raise ValueError("pass d_sae= to ReconstructionStats to accumulate sparsity from codes")
            if code.batch_size != x.shape[0]:
                raise DataError(f"code has {code.batch_size} rows but x has {x.shape[0]}")
            self.sparsity.update(code)

    def mean(self) -> Float[Tensor, " d_in"]:
        """The eval-set mean x̄ (fp64); usable as the mean-ablation vector."""
        if self.sum_x is None or self.rows == 0:
            raise ValueError("no rows seen yet")
        return self.sum_x / self.rows

    def compute(self) -> dict[str, Any]:
        n, s = self.rows, self.sums
        if n == 0:
            return {"rows": 0}
        total_var = s["x_sq"] - float((self.sum_x * self.sum_x).sum()) / n  # Σ‖x − x̄‖²
        fvu = safe_ratio(s["err_sq"], total_var)
        out: dict[str, Any] = {
            "rows": n,
            "fvu": fvu,
            "explained_variance": None if fvu is None else 1.0 - fvu,
            "explained_variance_variant": "1 - FVU, FVU = sum||x - x_hat||^2 / sum||x - mean(x)||^2",
            "mse_per_element": s["err_sq"] / (n * self.d_in),
            "mse_per_token": s["err_sq"] / n,
            "cosine_similarity": s["cos"] / n,
            "l2_ratio": s["l2_ratio"] / n,
            "relative_reconstruction_bias": safe_ratio(s["xhat_sq"], s["dot"]),
            "mean_input_norm_sq": s["x_sq"] / n,
        }
        if self.sparsity is not None and self.sparsity.tokens:
            out.update({k: v for k, v in self.sparsity.compute().items() if k != "tokens"})
        return out
