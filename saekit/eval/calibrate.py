"""Threshold calibration: make threshold-mode inference hit the method's target L0 on held-out-like rows.

BatchTopK / Mutual Choice and Feature Choice learn their inference thresholds as EMAs over training
batches (of the smallest selected value, or of each latent's m-th value). Those are biased estimators of
the threshold that gives mean L0 = k on new text: the issue-15 run measured threshold-mode L0 7–12 % above
k on held-out text. JumpReLU's trained θ only pulls L0 towards `target_l0` through its penalty. Here the
thresholds are re-estimated on N rows the SAE is evaluated like, with exact empirical quantiles (one
streaming pass over the rows, no sampling):

- ``global_quantile`` (BatchTopK, Mutual Choice): θ = midway between the (N·k)-th and (N·k+1)-th largest
  pre-activation of the N rows, i.e. BatchTopK's own selection on one batch of N rows, read as a threshold;
  mean L0 on those rows is then exactly k.
- ``per_latent_quantile`` (Feature Choice): θ_i = midway between the m-th and (m+1)-th largest h_i, with
  m = round(k·N/d_sae): Feature Choice's selection on one batch of N rows, so every latent fires on m of
  them and mean L0 = m·d_sae/N ≈ k.
- ``threshold_scale`` (JumpReLU): θ_i ← s·θ_i, with s the global quantile of h_i/θ_i, which keeps the
  trained per-latent shape of θ and sets mean L0 = target_l0.

    report = calibrate_thresholds_(sae, iter_rows, max_rows=16384)   # None: the method has no threshold
    report["l0_before"], report["l0_after"], report["target_l0"]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from saekit.errors import DataError
from saekit.sae import get_method
from saekit.sae.methods.batchtopk import BatchTopK
from saekit.sae.methods.feature_choice import FeatureChoice
from saekit.sae.methods.jumprelu import JumpRelu

logger = logging.getLogger(__name__)

ESTIMATORS = ("global_quantile", "per_latent_quantile", "threshold_scale")
_SCORE_FLOOR = 1e-6
"""JumpReLU latents with θ_i = 0 fire on any positive h; their ratio h/θ uses this floor instead of 0."""


def estimator_for(sae: Any) -> str | None:
    """The estimator that fits the SAE's activation, or None (no inference threshold to calibrate)."""
    activation = sae.activation
    if isinstance(activation, FeatureChoice):  # before BatchTopK: both share ThresholdInference
        return "per_latent_quantile"
    if isinstance(activation, BatchTopK):
        return "global_quantile"
    if isinstance(activation, JumpRelu):
        return "threshold_scale"
    return None


def target_l0(sae: Any) -> float | None:
    """The mean L0 the method aims at (its declared L0 key: k, or target_l0 for JumpReLU)."""
    key = get_method(sae.cfg.method).l0_param
    return None if key is None else float(sae.cfg.param(key))


@torch.no_grad()
def calibrate_thresholds_(
    sae: Any, rows: Iterable[Float[Tensor, "chunk d_in"]], *, max_rows: int
) -> dict[str, Any] | None:
    """Re-estimate `sae.threshold` in place from up to `max_rows` raw rows (chunks); returns a report, or
    None when the SAE has no threshold to calibrate."""
    estimator = estimator_for(sae)
    target = target_l0(sae)
    if estimator is None or target is None or sae.threshold is None:
        return None
    chunks = _normalised_chunks(sae, rows, max_rows)
    n_rows = sum(len(c) for c in chunks)
    if n_rows == 0:
        raise DataError("threshold calibration got no rows; give it a non-empty cache or held-out text")
    before = _mean_l0(sae, chunks, sae.threshold)
    old = sae.threshold.detach().clone()
    new = _ESTIMATE[estimator](sae, chunks, target)
    sae.threshold.data.copy_(new.to(sae.threshold.dtype))
    after = _mean_l0(sae, chunks, sae.threshold)
    logger.info(
        "calibrated %s thresholds (%s) on %d rows: L0 %.2f -> %.2f (target %.2f)",
        sae.cfg.method,
        estimator,
        n_rows,
        before,
        after,
        target,
    )
    return {
        "estimator": estimator,
        "target_l0": target,
        "rows": n_rows,
        "l0_before": before,
        "l0_after": after,
        "threshold_mean_before": float(old.double().mean()),
        "threshold_mean_after": float(sae.threshold.double().mean()),
    }


TRAINED_THRESHOLD_FILE = "threshold_trained.safetensors"
"""Where `save_calibrated` keeps a run's trained θ (written once, never overwritten)."""


def save_calibrated(sae: Any, checkpoint: Path, run_path: Path, report: dict[str, Any]) -> Path:
    """Write the calibrated `sae` over `checkpoint` (staged, so a crash leaves the old one whole), with
    `report` in its cfg.json `extra.calibration`; before the first overwrite the trained θ goes to
    <run>/threshold_trained.safetensors, so no calibration ever loses it. Returns the checkpoint path."""
    from safetensors.torch import load_file, save_file

    from saekit.io import atomic_path
    from saekit.sae.checkpoint import WEIGHTS_FILE

    kept = run_path / TRAINED_THRESHOLD_FILE
    if not kept.exists() and "calibration" not in sae.extra_cfg:  # θ already calibrated is not the trained θ
        trained = load_file(str(checkpoint / WEIGHTS_FILE))["threshold"]
        with atomic_path(kept) as tmp:
            save_file({"threshold": trained}, str(tmp), metadata={"source": str(checkpoint)})
    sae.extra_cfg = {**sae.extra_cfg, "calibration": {**report, "trained_threshold": str(kept)}}
    sae.save(checkpoint)
    logger.info("saved calibrated thresholds into %s (trained θ kept in %s)", checkpoint, kept)
    return checkpoint


# ---------------------------------------------------------------------------------------- estimators


def _normalised_chunks(sae: Any, rows: Iterable[Tensor], max_rows: int) -> list[Tensor]:
    device = sae.W_dec.device
    out, total = [], 0
    for chunk in rows:
        take = chunk[: max_rows - total]
        out.append(sae.scale_input(take.to(device)))
        total += len(take)
        if total >= max_rows:
            break
    return out


def _pre_acts(sae: Any, x: Tensor) -> Tensor:
    return sae.dense_pre_acts(x).float()


def _mean_l0(sae: Any, chunks: list[Tensor], threshold: Tensor) -> float:
    fired = sum(int((_pre_acts(sae, x) > threshold).sum()) for x in chunks)
    return fired / max(sum(len(x) for x in chunks), 1)


def midway_below_top(values: Iterable[Tensor], count: int) -> float:
    """A cut c with exactly `count` of the streamed values above it (midway between the count-th and the
    (count+1)-th largest); 0 when fewer than `count` values are positive (then all positive ones fire)."""
    best = torch.empty(0)
    for chunk in values:
        merged = torch.cat([best, chunk.reshape(-1).double().cpu()])
        best = torch.topk(merged, min(count + 1, merged.numel()), sorted=False).values
    if best.numel() <= count:
        return 0.0
    top = torch.topk(best, count + 1).values
    return max(float(top[-2] + top[-1]) / 2.0, 0.0)


def _global_quantile(sae: Any, chunks: list[Tensor], target: float) -> Tensor:
    count = round(target * sum(len(x) for x in chunks))
    cut = midway_below_top(
        (torch.topk(h.reshape(-1), min(count + 1, h.numel())).values for h in _iter_h(sae, chunks)), count
    )
    return torch.full((sae.d_sae,), cut)


def _per_latent_quantile(sae: Any, chunks: list[Tensor], target: float) -> Tensor:
    n_rows = sum(len(x) for x in chunks)
    m = max(1, min(n_rows - 1, round(target * n_rows / sae.d_sae)))
    best = None
    for h in _iter_h(sae, chunks):
        h_t = h.t().double().cpu()  # [d_sae, chunk]
        merged = h_t if best is None else torch.cat([best, h_t], dim=1)
        best = torch.topk(merged, min(m + 1, merged.shape[1]), dim=1).values
    assert best is not None and best.shape[1] == m + 1  # n_rows > m by construction
    return ((best[:, m - 1] + best[:, m]) / 2.0).clamp_min(0.0).float()


def _threshold_scale(sae: Any, chunks: list[Tensor], target: float) -> Tensor:
    base = sae.threshold.detach().float().clamp_min(_SCORE_FLOOR)
    count = round(target * sum(len(x) for x in chunks))
    scores = ((h / base).clamp_min(0.0) for h in _iter_h(sae, chunks))
    scale = midway_below_top(
        (torch.topk(s.reshape(-1), min(count + 1, s.numel())).values for s in scores), count
    )
    return sae.threshold.detach().float() * scale if scale > 0 else torch.zeros(sae.d_sae)


def _iter_h(sae: Any, chunks: list[Tensor]):
    for x in chunks:
        yield _pre_acts(sae, x)


_ESTIMATE: dict[str, Callable[[Any, list[Tensor], float], Tensor]] = {
    "global_quantile": _global_quantile,
    "per_latent_quantile": _per_latent_quantile,
    "threshold_scale": _threshold_scale,
}
