"""SAE initialisation: tied encoder/decoder directions and a data-driven decoder bias (algorithms.md §1.3).

Choices: decoder rows are unit-norm random directions (Kaiming-uniform draw, then normalised), the encoder is
exactly their transpose (dictionary_learning's variant of Gao's tied init), b_enc = 0, and b_dec is the
geometric median / mean / zero of a data sample. Gao's extra encoder rescale (divide W_enc by the mean
reconstruction norm of random unit inputs) is NOT applied: the OpenAI code notes it showed no clear
benefit, and with unit decoder rows plus W_enc = W_decᵀ an input along d_i already gives h_i = ‖x‖.

    sae = Sae(d_in, cfg)
    init_sae_from_data_(sae, sae.scale_input(x_sample))     # sample in the normalised space
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

MAX_MEDIAN_ROWS = 32_768
"""Rows used for the geometric median (OpenAI's `init_from_data_` uses the same cap)."""


@torch.no_grad()
def geometric_median(
    points: Float[Tensor, "n d"], max_iter: int = 100, tol: float = 1e-5
) -> Float[Tensor, " d"]:
    """Point minimising the sum of Euclidean distances to `points` (Weiszfeld iteration, from the mean).

    Stops after `max_iter` iterations or once a step is shorter than tol·max(1, ‖estimate‖) (relative, so
    the criterion means the same for small and large-norm activations). Distances are floored at a tiny
    fraction of the largest one, so an estimate landing exactly on a data point cannot divide by zero.
    Computed in fp32 (fp64 for fp64 input) on the points' device.
    """
    if points.dim() != 2 or points.shape[0] == 0:
        raise DataError(f"geometric_median needs a non-empty [n, d] tensor, got {tuple(points.shape)}")
    p = points.to(torch.float64 if points.dtype == torch.float64 else torch.float32)
    estimate = p.mean(dim=0)
    for it in range(max_iter):
        dist = (p - estimate).norm(dim=1)
        floor = (dist.max() * 1e-10).clamp_min(1e-30)  # 1e-30: all points equal to the estimate
        weights = 1.0 / dist.clamp_min(floor)
        new = (weights / weights.sum()) @ p
        step = (new - estimate).norm().item()
        estimate = new
        if step <= tol * max(1.0, estimate.norm().item()):
            logger.debug("geometric median converged after %d iterations", it + 1)
            break
    return estimate.to(points.dtype)


@torch.no_grad()
def init_weights_tied_(sae: Sae, generator: torch.Generator | None = None) -> None:
    """Random unit decoder rows, W_enc = W_decᵀ, b_enc = 0 (b_dec is left alone)."""
    bound = 1.0 / math.sqrt(sae.d_in)  # nn.Linear(d_in, d_sae)'s default Kaiming-uniform range
    directions = torch.empty(sae.d_sae, sae.d_in, dtype=torch.float32, device=sae.W_dec.device)
    directions.uniform_(-bound, bound, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sae.W_dec.copy_(directions)
    sae.W_enc.copy_(directions.t())
    sae.b_enc.zero_()


@torch.no_grad()
def init_sae_from_data_(
    sae: Sae, x_sample: Float[Tensor, "n d_in"], generator: torch.Generator | None = None
) -> None:
    """Re-initialise `sae` (tied directions, b_enc = 0) and set b_dec from a normalised-space sample.

    cfg.init: "tied" (random rows) or "subspace" (rows inside the sample's principal subspace).
    cfg.init_b_dec: "geometric_median" of up to 32 768 rows, "mean", or "zeros".
    Then the method's own initialisation (`Activation.init_from_data_`, e.g. JumpReLU thresholds).
    """
    if x_sample.dim() != 2 or x_sample.shape[1] != sae.d_in:
        raise DataError(f"init sample must be [n, {sae.d_in}], got {tuple(x_sample.shape)}")
    if not torch.isfinite(x_sample).all():
        raise DataError("init sample contains NaN/inf; check the activation cache")
    x = x_sample.to(device=sae.b_dec.device, dtype=torch.float32)
    if sae.cfg.init == "subspace":  # decoder rows inside the data's principal subspace (algorithms.md §8)
        from saekit.sae.subspace import init_subspace_

        init_subspace_(sae, x, generator)
    else:
        init_weights_tied_(sae, generator)
    mode = sae.cfg.init_b_dec
    if mode == "zeros":
        sae.b_dec.zero_()
    elif mode == "mean":
        sae.b_dec.copy_(x.mean(dim=0))
    elif mode == "geometric_median":
        sae.b_dec.copy_(geometric_median(x[:MAX_MEDIAN_ROWS]))
    else:
        raise ConfigError(f"sae.init_b_dec must be geometric_median, mean or zeros, got {mode!r}")
    sae.activation.init_from_data_(sae, x)
    logger.info("initialised SAE (d_sae=%d) with b_dec=%s from %d rows", sae.d_sae, mode, x.shape[0])
