"""g-SAE evaluation in its second selection mode: gradient-informed selection (algorithms.md §5.5).

A g-SAE selects latents with the help of dL/dx, which plain inference does not have. `evaluate_run`
reports the plain (TopK) mode at the top level of eval.json and, for every mode the method declares
(`Method.selection_modes`), adds the numbers computed here under ``selection_modes``: cached rows use
their stored gradients, held-out text gets them from one extra forward + backward per batch.

    for mode in get_method(sae.cfg.method).selection_modes:
        result["selection_modes"][mode] = SELECTION_MODE_METRICS[mode](sae, cache, model, tokens, cfg, mean)
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

from saekit.config import EvalConfig
from saekit.eval.cached_rows import cached_row_metrics, iter_last_rows
from saekit.eval.memo import ForwardMemo
from saekit.eval.metrics import ReconstructionStats
from saekit.eval.splice import spliced_losses


def grad_mode_metrics(
    sae: Any,
    cache: Any,
    model: Any,
    tokens: Int[Tensor, "n seq"],
    cfg: EvalConfig,
    mean_act: Float[Tensor, " d_in"],
    *,
    memo: ForwardMemo | None = None,
) -> dict[str, Any]:
    """The cached/heldout/splice numbers again with gradient-informed selection (algorithms.md §5.5): cached
    rows use their stored dL/dx, held-out text gets it from one extra forward + backward per batch. The
    top-level numbers of eval.json are the "plain" mode (TopK selection, no labels needed)."""
    from saekit.sae.methods.gsae import WithGradients

    cached = None
    if cache is not None and cache.has_grads:
        acts = iter_last_rows(cache, cfg.max_eval_rows)
        grads = iter_last_rows(cache, cfg.max_eval_rows, "grads")
        fed = WithGradients(sae, zip(acts, grads, strict=True))
        cached = cached_row_metrics(cache, fed, cfg.max_eval_rows, cfg.dense_threshold).compute()

    heldout = ReconstructionStats(sae.d_sae, cfg.dense_threshold)
    fed = WithGradients(sae, _heldout_grad_chunks(sae, model, tokens, cfg.batch_size))
    losses = spliced_losses(
        model, fed, tokens, batch_size=cfg.batch_size, mean_act=mean_act, recon=heldout, memo=memo
    )
    return {"cached": cached, "heldout": heldout.compute(), "splice": losses}


def _heldout_grad_chunks(
    sae: Any, model: Any, tokens: Int[Tensor, "n seq"], batch_size: int
) -> list[tuple[Tensor, Tensor]]:
    """One (acts, grads) chunk per spliced batch, in splice order. Captured up front: a capture inside the
    splice hook would run a nested forward that re-enters the hook."""
    from saekit.models import capture

    chunks = []
    for lo in range(0, tokens.shape[0], batch_size):
        cap = capture(model, tokens[lo : lo + batch_size], [sae.hookpoint], with_grads=True)
        chunks.append((cap.acts[sae.hookpoint].flatten(0, 1), cap.grads[sae.hookpoint].flatten(0, 1)))
    return chunks


SELECTION_MODE_METRICS = {"grad": grad_mode_metrics}
"""Evaluation of each non-plain selection mode a method may declare."""
