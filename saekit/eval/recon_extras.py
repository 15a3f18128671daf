"""Reconstruction extras on held-out rows: shrinkage, dense-latent analysis, per-prefix FVU for any SAE.

Field names follow SAEBench's core eval where it defines the metric (`shrinkage.l2_norm_in`,
`l2_norm_out`, `l2_ratio`, `relative_reconstruction_bias`; `reconstruction_quality.cossim`):
- l2_ratio = mean over tokens of ‖x̂‖/‖x‖; relative_reconstruction_bias = E‖x̂‖² / E⟨x, x̂⟩ (Gated SAE
  paper Eq. 10): < 1 means the SAE shrinks its reconstructions.
- dense latents fire on more than τ of the tokens (τ = 0.1 and 0.01 reported), with their share of all
  firings: a few dense latents can carry much of the L0 while saying little.
- per-prefix FVU: keep only the w most frequently firing latents of each token's code (w = d_sae/2^j) and
  decode; ordering by firing frequency makes any SAE comparable with Matryoshka's nested prefixes (which
  are also reported in index order, their trained nesting).

    stats = ReconExtras(sae.d_sae, prefix_widths(sae.d_sae))
    for x in rows: stats.update(x)               # raw rows
    result = stats.compute(sae)                  # the SAE encodes them in inference mode
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

DENSE_THRESHOLDS = (0.1, 0.01)
PREFIX_COUNT = 5


def prefix_widths(d_sae: int, count: int = PREFIX_COUNT) -> list[int]:
    """d_sae/2^(count−1), …, d_sae/2, d_sae (at least 1, distinct, increasing)."""
    return sorted({max(1, d_sae >> j) for j in range(count)})


class ReconExtras:
    """Streaming accumulators (fp64) for shrinkage, dense latents and per-prefix FVU.

    Per-prefix FVU needs the frequency order before decoding, so rows are kept (fp32) until `compute`;
    callers pass a bounded number of rows (the held-out eval text).
    """

    def __init__(self, d_sae: int, widths: list[int]) -> None:
        self.d_sae, self.widths = d_sae, widths
        self.rows: list[Tensor] = []

    def update(self, x: Float[Tensor, "batch d_in"]) -> None:
        self.rows.append(x.detach().float().cpu())

    @torch.no_grad()
    def compute(self, sae) -> dict[str, object]:
        if not self.rows:
            return {}
        x = torch.cat(self.rows)
        device = sae.W_dec.device
        codes = [sae.encode(chunk.to(device), training=False) for chunk in x.split(4096)]
        x_hat = torch.cat([_decode_raw(sae, code) for code in codes]).cpu().double()
        freq = torch.zeros(self.d_sae, dtype=torch.float64)
        for code in codes:
            freq += torch.bincount(code.indices.cpu(), minlength=self.d_sae).double()
        freq /= len(x)
        return {
            "shrinkage": shrinkage(x.double(), x_hat),
            "reconstruction_quality": {"cossim": _cossim(x.double(), x_hat)},
            "dense_latents": dense_latent_analysis(freq),
            "prefix_fvu": self._prefix_fvu(sae, x, codes, freq),
        }

    def _prefix_fvu(self, sae, x: Tensor, codes: list, freq: Tensor) -> dict[str, object]:
        by_frequency = torch.argsort(freq, descending=True, stable=True)
        rank = torch.empty_like(by_frequency)
        rank[by_frequency] = torch.arange(self.d_sae)
        out = {"widths": self.widths}
        for order, rank_of in (("frequency", rank), ("index", torch.arange(self.d_sae))):
            out[f"fvu_{order}_order"] = [_fvu_keeping(sae, x, codes, rank_of < w) for w in self.widths]
        out["definition"] = (
            "FVU after zeroing every latent outside the w most frequent (frequency order) or the first w "
            "(index order, Matryoshka's nesting); codes from the full SAE, not re-encoded"
        )
        return out


def shrinkage(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> dict[str, float]:
    """SAEBench's shrinkage block (see the module docstring), fp64."""
    norm_in, norm_out = x.norm(dim=1), x_hat.norm(dim=1)
    ratio = norm_out / norm_in.clamp_min(1e-12)
    return {
        "l2_norm_in": float(norm_in.mean()),
        "l2_norm_out": float(norm_out.mean()),
        "l2_ratio": float(ratio.mean()),
        "relative_reconstruction_bias": float(x_hat.pow(2).sum(1).mean() / (x * x_hat).sum(1).mean()),
    }


def dense_latent_analysis(freq: Float[Tensor, " d_sae"], top: int = 10) -> dict[str, object]:
    """Dense-latent fractions at each threshold, their share of all firings, and the densest latents."""
    total = float(freq.sum()) or 1.0
    out: dict[str, object] = {}
    for tau in DENSE_THRESHOLDS:
        dense = freq > tau
        out[f"fraction_above_{tau:g}"] = float(dense.double().mean())
        out[f"firing_share_above_{tau:g}"] = float(freq[dense].sum()) / total
    order = torch.argsort(freq, descending=True)[:top]
    out["densest"] = [{"latent": int(i), "frequency": float(freq[i])} for i in order]
    return out


def _cossim(x: Tensor, x_hat: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(x, x_hat, dim=1).mean())


def _decode_raw(sae, code) -> Tensor:
    x_hat = sae.decode(code)
    return x_hat / sae.act_scale if sae.act_scale != 1.0 else x_hat


def _fvu_keeping(sae, x: Tensor, codes: list, keep: Tensor) -> float:
    """FVU when only latents with keep[i] stay in each code (values of the others set to 0)."""
    keep = keep.to(sae.W_dec.device)
    x_hat = []
    for code in codes:
        values = torch.where(keep[code.indices], code.values, torch.zeros_like(code.values))
        x_hat.append(_decode_raw(sae, code.with_values(values)).cpu())
    err = (x.double() - torch.cat(x_hat).double()).pow(2).sum()
    var = (x.double() - x.double().mean(0)).pow(2).sum()
    return float(err / var)
