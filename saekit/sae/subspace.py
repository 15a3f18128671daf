"""Subspace-constrained initialisation (Wang et al. 2025; algorithms.md §8): start every decoder row inside
the principal subspace of the (normalised, BOS-free) training activations, so no latent begins pointing
where the data never goes — the reason most randomly initialised attention-output latents die.

Steps: centre the sample, eigen-decompose its covariance (fp64; same U as the SVD of the centred
sample), keep the smallest r whose components explain `cfg.subspace_variance` of the variance, map r
random coordinates per decoder row through U_r (the paper's W_dec ← W_dec[:, :r] U_rᵀ on a random init),
renormalise, and tie the encoder (W_enc = W_decᵀ, b_enc = 0). Works with any activation
(`sae.init=subspace`); the paper's optional decoder-norm grid search is not needed under saekit's unit-norm
decoder constraint.

    basis, r, explained = principal_subspace(x_sample, variance=0.99)
    init_subspace_(sae, sae.scale_input(x_sample))    # what init_sae_from_data_ does for init="subspace"
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from saekit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from saekit.sae.model import Sae

logger = logging.getLogger(__name__)


@torch.no_grad()
def principal_subspace(
    x: Float[Tensor, "n d_in"], variance: float
) -> tuple[Float[Tensor, "d_in r"], int, float]:
    """Orthonormal basis U_r of the top principal directions of `x`, its rank r and the variance share it
    explains; r is the smallest rank whose share reaches `variance` (fp64 throughout)."""
    if not 0.0 < variance <= 1.0:
        raise ConfigError(f"sae.subspace_variance must be in (0, 1], got {variance}")
    if x.dim() != 2 or x.shape[0] < 2:
        raise DataError(f"subspace init needs an [n >= 2, d_in] sample, got {tuple(x.shape)}")
    if x.shape[0] < x.shape[1]:
        # Fewer rows than dimensions: the sample alone cannot reveal which directions the data avoids.
        logger.warning(
            "subspace init from %d rows in %d dims: raise norm_estimation_tokens (N >> d_in)",
            x.shape[0],
            x.shape[1],
        )
    xc = x.to(torch.float64)
    xc = xc - xc.mean(dim=0)
    eigvals, eigvecs = torch.linalg.eigh(xc.t() @ xc)  # ascending; covariance up to the 1/n factor
    eigvals, eigvecs = eigvals.flip(0).clamp_min(0.0), eigvecs.flip(1)
    total = eigvals.sum()
    if not total > 0:
        raise DataError("subspace init sample has zero variance; check the activation cache")
    share = torch.cumsum(eigvals, 0) / total
    # Tolerance: share[-1] is 1 up to rounding, so a target of 1.0 must still be reachable.
    rank = int(torch.searchsorted(share, torch.tensor(variance - 1e-12, dtype=share.dtype)).item()) + 1
    rank = min(rank, x.shape[1])
    return eigvecs[:, :rank].contiguous(), rank, float(share[rank - 1])


@torch.no_grad()
def init_subspace_(
    sae: Sae, x_sample: Float[Tensor, "n d_in"], generator: torch.Generator | None = None
) -> int:
    """Tied init with every decoder row in span(U_r) of the normalised `x_sample`; returns r."""
    basis, rank, explained = principal_subspace(x_sample, sae.cfg.subspace_variance)
    bound = 1.0 / math.sqrt(sae.d_in)  # same Kaiming-uniform draw as the plain tied init
    coords = torch.empty(sae.d_sae, rank, dtype=torch.float64)
    coords.uniform_(-bound, bound, generator=generator)
    rows = coords @ basis.t()  # [d_sae, d_in], inside span(U_r) by construction
    rows /= rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    directions = rows.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)
    sae.W_dec.copy_(directions)
    sae.W_enc.copy_(directions.t())
    sae.b_enc.zero_()
    logger.info(
        "subspace init: r=%d of d_in=%d directions explain %.4f of the variance (target %.4f)",
        rank,
        sae.d_in,
        explained,
        sae.cfg.subspace_variance,
    )
    return rank
