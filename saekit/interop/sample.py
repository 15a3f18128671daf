"""The activations every conversion is checked on: given rows, the run's cached activations, or a seeded
synthetic sample shaped like the SAE's own inputs.

    x = verification_sample(foreign_or_sae_weights, given=None, cache_dir=None, hookpoint=None)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor

from saekit.errors import SaekitError
from saekit.formats import FormatError

logger = logging.getLogger(__name__)

SAMPLE_ROWS = 512


def load_rows(path: Path) -> Float[Tensor, "n d_in"]:
    """Rows from a .safetensors (key `acts`, or its only tensor), .pt (a tensor, weights_only) or .npy."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
            rows = tensors.get("acts", next(iter(tensors.values())) if len(tensors) == 1 else None)
        elif path.suffix == ".npy":
            rows = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            rows = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is one user-facing error
        raise FormatError(f"cannot read activations from {path} ({type(err).__name__}: {err})") from None
    if not isinstance(rows, Tensor) or rows.dim() != 2 or not rows.is_floating_point():
        raise FormatError(f"{path} must hold one float [rows, d_in] tensor (safetensors key 'acts')")
    return rows.float()


def cached_rows(cache_dir: str | Path, hookpoint: str | None, n: int) -> Float[Tensor, "n d_in"] | None:
    """The last `n` rows of a `saekit collect` cache, or None when it cannot be opened."""
    from saekit.activations import open_cache

    try:
        cache = open_cache(cache_dir, hookpoint)
        last = len(cache.shard_sizes) - 1
        return cache.load_shard(last)["acts"][-n:].float()
    except (SaekitError, OSError, KeyError, IndexError) as err:
        logger.info("no cached rows for the conversion check (%s); using a synthetic sample", err)
        return None


def synthetic_rows(
    W_dec: Tensor, b_dec: Tensor, act_scale: float, n: int = SAMPLE_ROWS, seed: int = 0
) -> Float[Tensor, "n d_in"]:
    """Raw rows like an SAE's inputs: half sparse sums of decoder rows plus the decoder bias, half Gaussian
    rows of the normalised norm √d_in, both mapped back to raw units by 1/act_scale."""
    gen = torch.Generator().manual_seed(seed)
    d_sae, d_in = W_dec.shape
    half = n // 2
    active = min(32, d_sae)
    idx = torch.stack([torch.randperm(d_sae, generator=gen)[:active] for _ in range(half)])
    coef = torch.rand(half, active, generator=gen) * 4.0
    rows = b_dec.float() + torch.einsum("nk,nkd->nd", coef, W_dec.float()[idx])
    gauss = torch.randn(n - half, d_in, generator=gen)
    gauss = gauss * (d_in**0.5) / gauss.norm(dim=1, keepdim=True) + b_dec.float()
    return torch.cat([rows, gauss]) / act_scale
