"""Synthetic ground-truth benchmark: train a method on data from a known dictionary and score recovery.

Data: `saekit.synthetic.CorrelatedHierarchicalData` (sparse, two-level hierarchy, parents firing in
correlated groups). Scores, on fresh rows, SAE in inference mode:
- ``mcc``: mean correlation coefficient — Pearson correlations between every true feature's coefficient and
  every latent's activation over the rows, one-to-one matched (Hungarian with scipy, else greedy; see
  `saekit.eval.consistency.matched_correlation`), averaged over the true features. 1 = every true feature
  has its own latent that tracks it exactly;
- ``recall``: fraction of true directions with a decoder row at cosine ≥ 0.9; ``precision``: fraction of
  live latents whose decoder row is at cosine ≥ 0.9 to some true direction;
- ``mean_max_cosine`` (each true direction's best decoder row), ``fvu`` and ``l0``.
Threshold methods are calibrated to their target L0 first (`saekit.eval.calibrate`) on separate rows.

    scores = benchmark_method(SaeConfig.make("topk", k=4), data)
    table = synthetic_benchmark(["topk", "batchtopk"])         # every registered method when None
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from saekit.eval.calibrate import calibrate_thresholds_
from saekit.eval.consistency import matched_correlation, unit_rows
from saekit.sae import (
    METHODS,
    Sae,
    SaeConfig,
    get_method,
    init_sae_from_data_,
    make_objective,
    mse_scale_from_sample,
)
from saekit.synthetic import CorrelatedHierarchicalData
from saekit.train.step import make_optimizer, training_step
from saekit.types import Batch

logger = logging.getLogger(__name__)

RECOVERED_COSINE = 0.9
DEFAULT_DATA = {"d_in": 64, "n_parents": 32, "children_per_parent": 2, "noise": 0.01}


def default_data(seed: int = 0) -> CorrelatedHierarchicalData:
    return CorrelatedHierarchicalData(seed=seed, **DEFAULT_DATA)


def recovery_scores(
    true_codes: Float[Tensor, "n n_features"],
    latent_acts: Float[Tensor, "n d_sae"],
    features: Float[Tensor, "n_features d_in"],
    W_dec: Float[Tensor, "d_sae d_in"],
) -> dict[str, Any]:
    """MCC, precision/recall and mean max cosine (see the module docstring)."""
    corr = _column_correlations(true_codes.double(), latent_acts.double())
    mcc, matching = matched_correlation(corr)
    cos = unit_rows(features) @ unit_rows(W_dec).t()  # [n_features, d_sae]
    alive = (latent_acts != 0).any(dim=0).cpu()
    return {
        "mcc": mcc,
        "matching": matching,
        "recall": float((cos.max(dim=1).values >= RECOVERED_COSINE).double().mean()),
        "precision": float((cos.max(dim=0).values[alive] >= RECOVERED_COSINE).double().mean())
        if alive.any()
        else 0.0,
        "mean_max_cosine": float(cos.max(dim=1).values.mean()),
        "recovered_cosine": RECOVERED_COSINE,
    }


def _column_correlations(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of every column of a with every column of b (constant columns: 0)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    a = a / a.norm(dim=0).clamp_min(1e-12)
    b = b / b.norm(dim=0).clamp_min(1e-12)
    return a.t() @ b


def synthetic_config(cfg: SaeConfig, data: CorrelatedHierarchicalData, expansion: int = 2) -> SaeConfig:
    """The same method and keys, sized for the data: d_sae = expansion × true features, L0 key = the
    data's mean number of active features."""
    key = get_method(cfg.method).l0_param
    keys: dict[str, Any] = {"d_sae": expansion * data.n_features, "normalize_activations": "none"}
    if key is not None:
        value = cfg.param(key)
        keys[key] = type(value)(max(1, round(data.mean_active))) if value is not None else value
    return cfg.replace(**keys)


def benchmark_method(
    cfg: SaeConfig,
    data: CorrelatedHierarchicalData,
    *,
    steps: int = 400,
    batch_rows: int = 512,
    lr: float = 3e-3,
    eval_rows: int = 8192,
    seed: int = 0,
) -> dict[str, Any]:
    """Train `cfg` on `data` with the trainer's own step, then score recovery on fresh rows."""
    torch.manual_seed(seed)
    sae = Sae(data.d_in, cfg)
    init_sae_from_data_(sae, data.sample(4096))
    mse_scale = mse_scale_from_sample(data.sample(4096))
    objective, optimizer = make_objective(cfg), make_optimizer(sae, lr=lr)
    for _ in range(steps):
        training_step(sae, objective, optimizer, Batch(data.sample(batch_rows)), mse_scale=mse_scale)
    sae.eval()
    # threshold methods: θ calibrated on other rows, so every method is scored at its target L0
    calibration = calibrate_thresholds_(sae, [data.sample(eval_rows)], max_rows=eval_rows)
    x, codes = data.sample_with_codes(eval_rows)
    with torch.no_grad():
        code = sae.encode(x, training=False)
        x_hat = sae.decode(code)
        acts = torch.zeros(eval_rows, sae.d_sae)
        acts[code.row_ids(), code.indices] = code.values.float()
    scores = recovery_scores(codes, acts, data.features, sae.W_dec)
    fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    l0 = float(code.l0_per_row().float().mean())
    scores.update(fvu=float(fvu), l0=l0, d_sae=sae.d_sae, steps=steps, calibrated=calibration is not None)
    return scores


def synthetic_benchmark(methods: list[str] | None = None, *, seed: int = 0, **train: Any) -> dict[str, Any]:
    """`benchmark_method` for each method (default keys), on one dataset; methods that need gradients
    (g-SAE) are listed as skipped, since synthetic rows have no model loss."""
    data = default_data(seed)
    out: dict[str, Any] = {"data": {**DEFAULT_DATA, "mean_active": data.mean_active}, "methods": {}}
    for name in methods or sorted(METHODS):
        if get_method(name).needs_grads:
            out["methods"][name] = {"skipped": "needs dL/dx, which synthetic data does not have"}
            continue
        cfg = synthetic_config(SaeConfig.make(name), data)
        out["methods"][name] = benchmark_method(cfg, data, seed=seed, **train)
        logger.info("synthetic %s: mcc %.3f", name, out["methods"][name]["mcc"])
    return out
