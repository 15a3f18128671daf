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
from jaxtyping import Bool, Float, Int
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


class HierarchicalData:
    """A two-level tree of known directions: children fire only together with their parent.

    Each row activates `parents_active` distinct parents (uniformly); each active parent, with probability
    `child_prob`, also activates exactly one of its `children_per_parent` children (children of one parent
    are mutually exclusive, like sub-categories). Every direction is a random unit vector (orthonormal with
    `orthogonal=True`); coefficients are U(coef_min, coef_max); optional Gaussian noise. Rows of `features`:
    parents first (0..P−1), then the children of parent 0, of parent 1, … — `parent_of[i]` is i's parent
    (−1 for parents). This is the toy setting where a flat TopK SAE absorbs parents into parent+child
    latents and a Matryoshka SAE should not (algorithms.md §3, §12).

        data = HierarchicalData(d_in=48, n_parents=6, children_per_parent=4, seed=0)
        x, active = data.sample_with_active(4096)         # active: [4096, n_features] bool
        data.parent_recall(sae.W_dec, sae.encode(x).to_dense() > 0, active)
    """

    def __init__(
        self,
        d_in: int,
        n_parents: int,
        children_per_parent: int,
        seed: int = 0,
        *,
        parents_active: int = 2,
        child_prob: float = 0.5,
        noise: float = 0.0,
        coef_min: float = 0.5,
        coef_max: float = 1.5,
        orthogonal: bool = False,
    ) -> None:
        if not 0 < parents_active <= n_parents:
            raise ValueError(f"need 0 < parents_active <= n_parents, got {parents_active}, {n_parents}")
        if children_per_parent < 1 or not 0.0 <= child_prob <= 1.0:
            raise ValueError("need children_per_parent >= 1 and child_prob in [0, 1]")
        self.d_in, self.n_parents, self.children_per_parent = d_in, n_parents, children_per_parent
        self.parents_active, self.child_prob = parents_active, child_prob
        self.noise, self.coef_min, self.coef_max = noise, coef_min, coef_max
        self.n_features = n_parents * (1 + children_per_parent)
        self.generator = torch.Generator().manual_seed(seed)
        features = torch.randn(self.n_features, d_in, generator=self.generator)
        if orthogonal:  # exactly orthonormal directions: no interference, only the hierarchy is hard
            if d_in < self.n_features:
                raise ValueError(f"orthogonal=True needs d_in >= {self.n_features} (one axis per direction)")
            features = torch.linalg.qr(features.t()).Q.t()
        self.features: Float[Tensor, "n_features d_in"] = features / features.norm(dim=1, keepdim=True)
        children_parent = torch.arange(n_parents).repeat_interleave(children_per_parent)
        roots = torch.full((n_parents,), -1)
        self.parent_of: Int[Tensor, " n_features"] = torch.cat([roots, children_parent])

    def sample_with_active(self, n: int) -> tuple[Float[Tensor, "n d_in"], Bool[Tensor, "n n_features"]]:
        """Rows plus which true directions are active in each (the parent of every active child is active)."""
        gen, P, C = self.generator, self.n_parents, self.children_per_parent
        parents = torch.multinomial(torch.ones(n, P), self.parents_active, replacement=False, generator=gen)
        active = torch.zeros(n, self.n_features, dtype=torch.bool)
        active.scatter_(1, parents, True)
        with_child = torch.rand(n, self.parents_active, generator=gen) < self.child_prob
        child = torch.randint(0, C, (n, self.parents_active), generator=gen)
        child_ids = P + parents * C + child
        rows = torch.arange(n).unsqueeze(1).expand_as(child_ids)
        active[rows[with_child], child_ids[with_child]] = True
        unit = torch.rand(n, self.n_features, generator=gen)
        coefs = self.coef_min + (self.coef_max - self.coef_min) * unit
        x = (coefs * active) @ self.features
        if self.noise > 0:
            x = x + self.noise * torch.randn(n, self.d_in, generator=gen)
        return x, active

    def sample(self, n: int) -> Float[Tensor, "n d_in"]:
        return self.sample_with_active(n)[0]

    def recovery_score(self, W_dec: Float[Tensor, "d_sae d_in"], which: str = "all") -> float:
        """Mean over true directions ('parents', 'children' or 'all') of the best decoder-row cosine."""
        select = {"parents": self.parent_of < 0, "children": self.parent_of >= 0, "all": self.parent_of > -2}
        if which not in select:
            raise ValueError(f"which must be one of {sorted(select)}, got {which!r}")
        dec = W_dec.detach().float().cpu()
        dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (self.features[select[which]] @ dec.t()).max(dim=1).values.mean().item()

    def parent_recall(
        self,
        W_dec: Float[Tensor, "d_sae d_in"],
        fired: Bool[Tensor, "n d_sae"],
        active: Bool[Tensor, "n n_features"],
    ) -> float:
        """Absorption check: take, for each parent, the latent whose decoder row is closest to it; return the
        fraction of rows with that parent AND one of its children active in which the latent fires (mean
        over parents). An SAE that absorbs parents into parent+child latents scores low."""
        dec = W_dec.detach().float().cpu()
        dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        P = self.n_parents
        best = (self.features[:P] @ dec.t()).argmax(dim=1)
        fired, active = fired.cpu(), active.cpu()
        recalls = []
        for p in range(P):
            with_child = active[:, P:][:, self.parent_of[P:] == p].any(dim=1) & active[:, p]
            if with_child.any():
                recalls.append(fired[with_child, best[p]].float().mean().item())
        return sum(recalls) / max(len(recalls), 1)


class CorrelatedHierarchicalData:
    """Ground truth for the synthetic benchmark: a known sparse, hierarchical dictionary whose parents fire
    in correlated groups.

    Parents come in groups of `group_size`; parent p fires when z_p = √ρ·g_group + √(1−ρ)·ε_p exceeds the
    standard-normal quantile that gives P(fire) = `parent_rate` (a Gaussian copula: parents of one group
    fire together with correlation set by ρ = `correlation`). Each active parent activates one of its
    `children_per_parent` children with probability `child_prob`. Coefficients U(coef_min, coef_max), unit
    directions (rows of `features`: parents, then children grouped by parent), optional Gaussian noise.
    `sample_with_codes` returns the true coefficient matrix, so recovery can be scored on activations.

        data = CorrelatedHierarchicalData(d_in=64, n_parents=32, children_per_parent=2, seed=0)
        x, codes = data.sample_with_codes(4096)      # codes: [4096, n_features], 0 where inactive
    """

    def __init__(
        self,
        d_in: int,
        n_parents: int,
        children_per_parent: int,
        seed: int = 0,
        *,
        parent_rate: float = 0.08,
        child_prob: float = 0.5,
        group_size: int = 4,
        correlation: float = 0.5,
        noise: float = 0.0,
        coef_min: float = 0.5,
        coef_max: float = 1.5,
    ) -> None:
        if not (0 < parent_rate < 1 and 0 <= child_prob <= 1 and 0 <= correlation < 1):
            raise ValueError("need 0 < parent_rate < 1, 0 <= child_prob <= 1 and 0 <= correlation < 1")
        if n_parents % group_size:
            raise ValueError(f"n_parents={n_parents} must be a multiple of group_size={group_size}")
        self.d_in, self.n_parents, self.children_per_parent = d_in, n_parents, children_per_parent
        self.parent_rate, self.child_prob, self.correlation = parent_rate, child_prob, correlation
        self.group_size, self.noise, self.coef_min, self.coef_max = group_size, noise, coef_min, coef_max
        self.n_features = n_parents * (1 + children_per_parent)
        self.generator = torch.Generator().manual_seed(seed)
        features = torch.randn(self.n_features, d_in, generator=self.generator)
        self.features: Float[Tensor, "n_features d_in"] = features / features.norm(dim=1, keepdim=True)
        self.parent_of = torch.cat(
            [torch.full((n_parents,), -1), torch.arange(n_parents).repeat_interleave(children_per_parent)]
        )
        self._cut = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - parent_rate)))

    @property
    def mean_active(self) -> float:
        """Expected number of active true features per row."""
        return self.n_parents * self.parent_rate * (1.0 + self.child_prob)

    def sample_with_codes(self, n: int) -> tuple[Float[Tensor, "n d_in"], Float[Tensor, "n n_features"]]:
        gen, P, C = self.generator, self.n_parents, self.children_per_parent
        shared = torch.randn(n, P // self.group_size, generator=gen).repeat_interleave(self.group_size, 1)
        own = torch.randn(n, P, generator=gen)
        z = self.correlation**0.5 * shared + (1.0 - self.correlation) ** 0.5 * own
        active = torch.zeros(n, self.n_features, dtype=torch.bool)
        active[:, :P] = z > self._cut
        with_child = active[:, :P] & (torch.rand(n, P, generator=gen) < self.child_prob)
        child = P + torch.arange(P) * C + torch.randint(0, C, (n, P), generator=gen)
        rows, parents = torch.nonzero(with_child, as_tuple=True)
        active[rows, child[rows, parents]] = True
        unit = torch.rand(n, self.n_features, generator=gen)
        codes = (self.coef_min + (self.coef_max - self.coef_min) * unit) * active
        x = codes @ self.features
        if self.noise > 0:
            x = x + self.noise * torch.randn(n, self.d_in, generator=gen)
        return x, codes

    def sample(self, n: int) -> Float[Tensor, "n d_in"]:
        return self.sample_with_codes(n)[0]
