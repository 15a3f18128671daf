"""Weight-only checks: duplicate latents within one SAE, and seed consistency between two SAEs.

- Duplicate latents: for every latent, the largest cosine between its decoder row (encoder column) and any
  other latent's; reported as mean, max and the fraction above 0.9 (near-duplicates).
- Seed consistency (two runs that differ only in seed): mean over latents of A of the best decoder cosine
  in B (and B→A), and the mean cosine of a one-to-one matching — the Hungarian assignment
  (scipy.optimize.linear_sum_assignment) when scipy is installed, otherwise a greedy matching (mutual best
  pairs first), which can only be lower; the method used is recorded.
- `matched_correlation` is the same matching on any similarity matrix (the synthetic benchmark's MCC).

    dup = duplicate_latents(sae)                 # {"decoder": {...}, "encoder": {...}}
    cons = seed_consistency(sae_a.W_dec, sae_b.W_dec)
"""

from __future__ import annotations

import importlib.util

import torch
from jaxtyping import Float
from torch import Tensor

DUPLICATE_COSINE = 0.9
CHUNK = 2048


def unit_rows(w: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    w = w.detach().double().cpu()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def max_cosine_to_others(w: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
    """For each row, the largest cosine with any *other* row (chunked: memory CHUNK × n)."""
    u = unit_rows(w)
    best = torch.empty(len(u), dtype=torch.float64)
    for lo in range(0, len(u), CHUNK):
        sims = u[lo : lo + CHUNK] @ u.t()
        idx = torch.arange(lo, min(lo + CHUNK, len(u)))
        sims[idx - lo, idx] = -2.0  # not with itself
        best[idx] = sims.max(dim=1).values
    return best


def _summary(best: Tensor) -> dict[str, float]:
    return {
        "mean_max_cosine": float(best.mean()),
        "max_cosine": float(best.max()),
        f"fraction_above_{DUPLICATE_COSINE:g}": float((best > DUPLICATE_COSINE).double().mean()),
    }


def duplicate_latents(sae) -> dict[str, object]:
    """Max decoder and encoder cosine between distinct latents of one SAE."""
    return {
        "decoder": _summary(max_cosine_to_others(sae.W_dec)),
        "encoder": _summary(max_cosine_to_others(sae.W_enc_T)),
        "duplicate_cosine": DUPLICATE_COSINE,
    }


def matched_correlation(sim: Float[Tensor, "a b"]) -> tuple[float, str]:
    """Mean similarity of a one-to-one matching of rows to columns (min(a, b) pairs) and the method."""
    sim = sim.detach().double().cpu()
    if importlib.util.find_spec("scipy") is not None:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(sim.numpy(), maximize=True)
        return float(sim[torch.as_tensor(rows), torch.as_tensor(cols)].mean()), "hungarian"
    return _greedy_matching(sim), "greedy (scipy not installed)"


def _greedy_matching(sim: Tensor) -> float:
    """Repeatedly pair every row and column that are each other's best among the unmatched (mutual best
    pairs, vectorised); the globally best unmatched pair is always mutual, so every round makes progress."""
    sim = sim.clone()
    total, pairs, target = 0.0, 0, min(sim.shape)
    while pairs < target:
        best_col = sim.argmax(dim=1)
        best_row = sim.argmax(dim=0)
        rows = torch.nonzero(best_row[best_col] == torch.arange(len(sim))).squeeze(1)
        rows = rows[torch.isfinite(sim[rows, best_col[rows]])]
        cols = best_col[rows]
        total += float(sim[rows, cols].sum())
        pairs += len(rows)
        sim[rows, :] = -torch.inf
        sim[:, cols] = -torch.inf
    return total / max(pairs, 1)


def seed_consistency(
    W_dec_a: Float[Tensor, "n d"], W_dec_b: Float[Tensor, "m d"], *, match: bool = True
) -> dict[str, object]:
    """Decoder similarity of two SAEs (see the module docstring)."""
    if W_dec_a.shape[1] != W_dec_b.shape[1]:
        raise ValueError(f"decoders of different widths d_in: {W_dec_a.shape[1]} vs {W_dec_b.shape[1]}")
    sims = unit_rows(W_dec_a) @ unit_rows(W_dec_b).t()
    out: dict[str, object] = {
        "mean_max_cosine_a_to_b": float(sims.max(dim=1).values.mean()),
        "mean_max_cosine_b_to_a": float(sims.max(dim=0).values.mean()),
        "fraction_matched_above_0.9": float((sims.max(dim=1).values > 0.9).double().mean()),
    }
    if match:
        out["matched_mean_cosine"], out["matching"] = matched_correlation(sims)
    return out
