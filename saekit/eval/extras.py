"""The evaluations beyond FVU/L0/CE, gathered for `saekit eval` (eval.json key ``extras``).

Always (cheap, on the held-out rows of the eval text): shrinkage and cosine (SAEBench names), dense-latent
analysis, per-prefix FVU in frequency and index order, duplicate latents. Opt-in (EvalConfig): seed
consistency against `seed_pair`, first-letter absorption (`absorption`), the synthetic ground-truth
benchmark of the run's method (`synthetic`).

    extras = extra_metrics(sae, cfg, rows=x_heldout, model=model)
"""

from __future__ import annotations

import logging
from typing import Any

from jaxtyping import Float
from torch import Tensor

from saekit.config import EvalConfig
from saekit.eval.consistency import duplicate_latents, seed_consistency
from saekit.eval.recon_extras import ReconExtras, prefix_widths

logger = logging.getLogger(__name__)


def extra_metrics(sae: Any, cfg: EvalConfig, *, rows: Float[Tensor, "n d_in"], model: Any) -> dict[str, Any]:
    stats = ReconExtras(sae.d_sae, prefix_widths(sae.d_sae))
    stats.update(rows)
    out: dict[str, Any] = {
        "rows": len(rows),
        **stats.compute(sae),
        "duplicate_latents": duplicate_latents(sae),
    }
    if cfg.seed_pair is not None:
        out["seed_consistency"] = _seed_consistency(sae, cfg.seed_pair)
    if cfg.absorption:
        from saekit.eval.absorption import absorption_scores, first_letter_activations

        x, letters = first_letter_activations(model, sae.hookpoint)
        out["absorption"] = absorption_scores(sae, x, letters)
    if cfg.synthetic:
        out["synthetic"] = _synthetic(sae)
    return out


def _seed_consistency(sae: Any, other_run: str) -> dict[str, Any]:
    from saekit.errors import DataError
    from saekit.rundir import RunDir

    other = RunDir(other_run).load_sae()
    if other.cfg.method != sae.cfg.method or other.W_dec.shape != sae.W_dec.shape:
        raise DataError(
            f"seed_pair={other_run} holds a {other.cfg.method} SAE of shape {tuple(other.W_dec.shape)}, "
            f"this run a {sae.cfg.method} of shape {tuple(sae.W_dec.shape)}; pair runs differing only in seed"
        )
    return {"other_run": str(other_run), **seed_consistency(sae.W_dec, other.W_dec)}


def _synthetic(sae: Any) -> dict[str, Any]:
    from saekit.eval.ground_truth import benchmark_method, default_data, synthetic_config
    from saekit.sae import get_method

    if get_method(sae.cfg.method).needs_grads:
        return {"skipped": "the method needs dL/dx, which synthetic data does not have"}
    data = default_data()
    return benchmark_method(synthetic_config(sae.cfg, data), data)
