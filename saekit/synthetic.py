"""Synthetic activations with a known dictionary, for ground-truth recovery tests (algorithms.md §12).

`SparseDictionaryData` draws x = Σ_{i∈S} c_i f_i + ε with unit-norm true latent directions f_i (rows of
`features`), |S| = k_active distinct directions per row chosen uniformly (or with Zipf-like frequencies),
positive coefficients c_i ~ U(coef_min, coef_max), and Gaussian noise ε of per-dimension std `noise`.
Everything comes from one seeded generator, so a given seed yields the same dictionary and sample stream.

    data = SparseDictionaryData(d_in=32, n_features=64, k_active=3, seed=0)
    x = data.sample(4096)                          # [4096, 32]
    score = data.recovery_score(sae.W_dec)         # mean over true directions of max decoder cosine
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


class SparseDictionaryData:
    """Sparse non-negative combinations of `n_features` random unit directions in R^d_in."""

    def __init__(
        self,
        d_in: int,
        n_features: int,
        k_active: int,
        seed: int = 0,
        *,
        noise: float = 0.0,
        coef_min: float = 0.5,
        coef_max: float = 1.5,
        zipf_exponent: float = 0.0,
    ) -> None:
        if not 0 < k_active <= n_features:
            raise ValueError(f"need 0 < k_active <= n_features, got k_active={k_active}, n={n_features}")
        if not 0 <= coef_min <= coef_max:
            raise ValueError(f"need 0 <= coef_min <= coef_max, got {coef_min}, {coef_max}")
        self.d_in, self.n_features, self.k_active = d_in, n_features, k_active
        self.noise, self.coef_min, self.coef_max = noise, coef_min, coef_max
        self.generator = torch.Generator().manual_seed(seed)
        features = torch.randn(n_features, d_in, generator=self.generator)
        self.features: Float[Tensor, "n_features d_in"] = features / features.norm(dim=1, keepdim=True)
        # Direction i is picked with weight (i+1)^-s; s = 0 gives uniform frequencies.
        ranks = torch.arange(1, n_features + 1, dtype=torch.float64)
        self.frequency_weights: Float[Tensor, " n_features"] = ranks.pow(-zipf_exponent).float()

    def sample_with_codes(
        self, n: int
    ) -> tuple[Float[Tensor, "n d_in"], Int[Tensor, "n k_active"], Float[Tensor, "n k_active"]]:
        """Rows plus the true active directions and their coefficients."""
        weights = self.frequency_weights.expand(n, -1)
        active = torch.multinomial(weights, self.k_active, replacement=False, generator=self.generator)
        coefs = torch.rand(n, self.k_active, generator=self.generator)
        coefs = self.coef_min + (self.coef_max - self.coef_min) * coefs
        x = torch.einsum("nk,nkd->nd", coefs, self.features[active])
        if self.noise > 0:
            x = x + self.noise * torch.randn(n, self.d_in, generator=self.generator)
        return x, active, coefs

    def sample(self, n: int) -> Float[Tensor, "n d_in"]:
        return self.sample_with_codes(n)[0]

    def recovery_score(self, W_dec: Float[Tensor, "d_sae d_in"]) -> float:
        """Mean over true directions of the best cosine with any decoder row (1.0 = all recovered)."""
        dec = W_dec.detach().float().cpu()
        dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (self.features @ dec.t()).max(dim=1).values.mean().item()
