"""Comparing two SAEs' outputs on one sample: which latents fire, what they are worth, what comes out.

agreement = compare_outputs((z_a, x_hat_a), (z_b, x_hat_b))
require_agreement(agreement, "export to saelens")     # FormatError above tolerance
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from jaxtyping import Float
from torch import Tensor

from saekit.formats import FormatError

RECONSTRUCTION_RTOL = 1e-4
"""max |Δx̂| allowed, relative to the largest |x̂| of the source (fp32 rounding is ~1e-6 of it)."""
MIN_LATENT_AGREEMENT = 0.999
"""Fraction of active (row, latent) pairs both sides must share: a tie at the k-th pre-activation may be
broken differently once the scale is folded, nothing more."""


@dataclass(frozen=True)
class Agreement:
    rows: int
    max_abs_dx: float
    """max |x̂_a − x̂_b| over rows whose active latents agree (a flipped tie moves its row by a latent)."""
    max_abs_dx_all_rows: float
    max_abs_x_hat: float
    max_abs_dz: float
    """max |z_a − z_b| over latents active on both sides."""
    latent_agreement: float
    """|A ∩ B| / |A ∪ B| over all active (row, latent) pairs (1.0: identical codes)."""
    rows_identical: float
    """Fraction of rows with exactly the same active latents."""
    mean_l0: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.rows} rows: max |Δx̂| {self.max_abs_dx:.2e} (max |x̂| {self.max_abs_x_hat:.3g}), latent "
            f"agreement {self.latent_agreement:.6f}, identical rows {self.rows_identical:.4f}, mean L0 "
            f"{self.mean_l0:.1f}"
        )


def compare_outputs(
    a: tuple[Float[Tensor, "n d_sae"], Float[Tensor, "n d_in"]],
    b: tuple[Float[Tensor, "n d_sae"], Float[Tensor, "n d_in"]],
) -> Agreement:
    """Agreement of (dense z, x̂) from two SAEs on the same rows (computed in fp64)."""
    z_a, x_a = (t.detach().double().cpu() for t in a)
    z_b, x_b = (t.detach().double().cpu() for t in b)
    if z_a.shape != z_b.shape or x_a.shape != x_b.shape:
        raise FormatError(
            f"the converted SAE's outputs have shapes {tuple(z_b.shape)}, {tuple(x_b.shape)}, the source's "
            f"{tuple(z_a.shape)}, {tuple(x_a.shape)}"
        )
    on_a, on_b = z_a > 0, z_b > 0
    union = int((on_a | on_b).sum())
    same_rows = (on_a == on_b).all(dim=1)
    dx = (x_a - x_b).abs().amax(dim=1)
    both = on_a & on_b
    return Agreement(
        rows=int(z_a.shape[0]),
        max_abs_dx=float(dx[same_rows].max()) if bool(same_rows.any()) else float("inf"),
        max_abs_dx_all_rows=float(dx.max()) if dx.numel() else 0.0,
        max_abs_x_hat=float(x_a.abs().max()) if x_a.numel() else 0.0,
        max_abs_dz=float((z_a - z_b).abs()[both].max()) if bool(both.any()) else 0.0,
        latent_agreement=float((on_a & on_b).sum()) / union if union else 1.0,
        rows_identical=float(same_rows.double().mean()) if same_rows.numel() else 1.0,
        mean_l0=float(on_a.sum(dim=1).double().mean()) if on_a.numel() else 0.0,
    )


def require_agreement(agreement: Agreement, what: str) -> Agreement:
    """FormatError (nothing is written by the caller) when the outputs differ beyond tolerance."""
    tolerance = RECONSTRUCTION_RTOL * max(1.0, agreement.max_abs_x_hat)
    if agreement.latent_agreement < MIN_LATENT_AGREEMENT or not agreement.max_abs_dx <= tolerance:
        raise FormatError(
            f"{what}: the converted SAE does not compute the source's outputs ({agreement.summary()}; "
            f"allowed: agreement >= {MIN_LATENT_AGREEMENT}, max |Δx̂| <= {tolerance:.2e}); nothing was "
            "written — please report this with the source files"
        )
    return agreement
