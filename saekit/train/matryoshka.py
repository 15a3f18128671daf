"""Matryoshka objective (algorithms.md §3.1-3.2): nested dictionary prefixes that must each reconstruct alone.

Reconstruction g may use only latents [0, m_g). All prefixes come from ONE encoder pass and ONE sparse
decode: every selected entry is put in a bag (block, row), where block g holds the latents [m_{g−1}, m_g);
`sparse_decode` sums each bag, and the nested losses accumulate the block sums in order (residual
r_g = r_{g−1} − s_g), so the G prefix reconstructions are never materialised; that prefix math lives in
`saekit.train.prefixes` (re-exported here). This module holds the objective and the latent re-sorting.
Works with any per-token or batch-coupled activation (BatchTopK is the usual choice).

Loss: L = Σ_g w_g·L_g + α·L_aux with L_g = (1/B)·Σ_b ||x_b − x̂_g,b||² / E||x − x̄||², i.e. the per-token
squared-error sum averaged over the batch, divided by the fixed per-token total variance d/mse_scale of
the training sample. So L_g is prefix g's FVU against a fixed denominator — the same units as the TopK
main term, which keeps α = 1/32 meaningful. AuxK models the residual of the full-width reconstruction.

`prefix_mode: fixed` uses cfg.prefixes (default [n/16, n/8, n/4, n/2, n]) with weights cfg.prefix_weights
(default 1/G). `prefix_mode: sampled` (Nabeshima) draws new cut points every step and, in `post_step`,
re-sorts latents by an EMA of their importance — permuting weights, threshold, Adam moments and the
dead-latent counters together so the model and the next optimiser step are unchanged by the re-sort.
The EMA lives in the objective (per SAE) and reaches trainer checkpoints through state_dict/load_state_dict.

    objective = get_objective("matryoshka")           # cfg.prefix_mode picks fixed or sampled
    out = objective(sae, batch, dead_mask=tracker.dead_mask(), mse_scale=s)
    x_hats = prefix_reconstructions(sae.encode(x), sae.W_dec, sae.b_dec, [64, 256, 1024])   # [B, 3, d]
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saekit.errors import RunDirError
from saekit.sae.model import Sae
from saekit.train.objectives import StepOutput, auxk_loss, firing, register_objective

# The prefix math lives in `saekit.train.prefixes`; these names stay importable from here (tests,
# eval.levels and older code import them from this module).
from saekit.train.prefixes import (  # noqa: F401
    SAMPLED_PARETO_POWER,
    block_sums,
    nested_losses,
    nested_residual,
    prefix_block_sums,
    prefix_blocks,
    prefix_losses,
    prefix_reconstructions,
    resolve_prefix_weights,
    resolve_prefixes,
    sample_prefixes,
)
from saekit.types import Batch, SparseCode

logger = logging.getLogger(__name__)

IMPORTANCE_EMA = 0.05
"""Weight of the newest batch in the latent-importance EMA used for re-sorting (Nabeshima: 0.95/0.05)."""
RESORT_BINS_PER_OCTAVE = 4
"""Re-sorting compares importances on a log2 grid with 4 steps per doubling (~19 % apart); see resort_key."""


# ---------------------------------------------------------------------------------------- objective


@dataclass
class _SampledState:
    """Per-SAE state of the sampled mode (kept off the Sae so checkpoints stay architecture-neutral)."""

    importance: Float[Tensor, " d_sae"] | None = None
    """EMA of mean_b (z_i·||d_i||)², in the current latent order."""
    pending: Float[Tensor, " d_sae"] | None = None
    """This step's importance, folded into the EMA by post_step."""
    pending_tokens: int = 0
    tokens_since_resort: int = 0


class MatryoshkaObjective:
    """Callable objective with a `post_step` hook (the trainer calls it after the optimiser step).

    `resort_every_tokens`: the sampled mode updates the importance EMA every step but physically re-sorts
    latents only once this many tokens have passed since the last re-sort (and on the first step). Any
    change of order shifts whole ranges of latents, so a re-sort moves nearly all of them: 0.3-1.3 s at
    d_sae=16384, d_in=768 on 2 cores (weights and both Adam moments), i.e. +20-50 % per step if done every
    step as in Nabeshima's GPU code. With the EMA's ~20-step memory, an order up to 8 batches of 4096 old
    changes which latents fall in a sampled prefix very little.
    """

    def __init__(self, resort_every_tokens: int = 32_768) -> None:
        self.resort_every_tokens = resort_every_tokens
        self._states: weakref.WeakKeyDictionary[Sae, _SampledState] = weakref.WeakKeyDictionary()

    def __call__(
        self,
        sae: Sae,
        batch: Batch,
        *,
        dead_mask: Bool[Tensor, " d_sae"] | None,
        mse_scale: float,
        prefixes: list[int] | None = None,
    ) -> StepOutput:
        """Σ_g w_g L_g + aux_coef·L_aux on normalised `batch.acts`; `prefixes` overrides the configured."""
        cfg = sae.cfg
        sampled = cfg.prefix_mode == "sampled"
        if prefixes is None:
            prefixes = (
                sample_prefixes(sae.d_sae, cfg.n_sampled_prefixes, cfg.min_prefix_length)
                if sampled
                else resolve_prefixes(cfg, sae.d_sae)
            )
        # Sampled widths change every step, so per-width weights cannot be configured: 1/G (Nabeshima).
        weights = (
            [1.0 / len(prefixes)] * len(prefixes) if sampled else resolve_prefix_weights(cfg, len(prefixes))
        )
        x = batch.acts.to(sae.W_dec.dtype)
        dead_idx = dead_columns(sae, dead_mask)
        enc = sae.activation.encode(sae, x, batch=batch, training=sae.training, aux_columns=dead_idx)
        sums = prefix_block_sums(enc.code, sae.W_dec, prefixes)
        per_prefix = nested_losses(x, sae.b_dec, sums, mse_scale)
        main = (torch.tensor(weights, device=x.device) * per_prefix).sum()
        residual = nested_residual(x, sae.b_dec, sums, len(prefixes) - 1)
        aux = torch.zeros((), device=x.device)
        if dead_idx is not None:
            aux = auxk_loss(sae, x, residual, enc.aux_pre_acts, dead_idx, sae.cfg.resolve_k_aux(sae.d_in))
        loss = main + sae.cfg.aux_coef * aux
        if sampled:
            state = self._state(sae)
            state.pending, state.pending_tokens = _latent_importance(enc.code, sae.W_dec), len(batch)
        return _step_output(loss, main, aux, per_prefix, prefixes, sampled, x, residual, enc.code, dead_mask)

    def post_step(self, sae: Sae, optimizer: torch.optim.Optimizer, tracker, out: StepOutput) -> None:
        """Sampled mode: fold this step's importance into the EMA; when due, re-sort latents by it
        (descending) — weights, threshold, Adam moments, dead counters and the EMA move together.

        Also permutes `out.fired` / `out.fire_counts`: the trainer updates the tracker after this hook.
        """
        if sae.cfg.prefix_mode != "sampled":
            return
        state = self._state(sae)
        if state.pending is None:
            return
        fresh, old = state.pending, state.importance
        state.importance = fresh if old is None else (1 - IMPORTANCE_EMA) * old + IMPORTANCE_EMA * fresh
        first = old is None
        state.pending = None
        state.tokens_since_resort += state.pending_tokens
        if not first and state.tokens_since_resort < self.resort_every_tokens:
            return
        state.tokens_since_resort = 0
        perm = torch.sort(resort_key(state.importance), descending=True, stable=True).indices
        moved = permute_latents_(sae, perm, optimizer=optimizer, tracker=tracker, extra=[state.importance])
        if moved:
            out.fired = out.fired[perm.to(out.fired.device)]
            if out.fire_counts is not None:
                out.fire_counts = out.fire_counts[perm.to(out.fire_counts.device)]

    def importance(self, sae: Sae) -> Float[Tensor, " d_sae"] | None:
        """The current importance EMA of `sae` (None before the first sampled step)."""
        state = self._states.get(sae)
        return None if state is None else state.importance

    def state_dict(self, sae: Sae) -> dict[str, Any]:
        """Sampled-mode state for trainer checkpoints, JSON-native (fp32 values round-trip exactly)."""
        state = self._states.get(sae)
        importance = None if state is None or state.importance is None else state.importance.cpu().tolist()
        return {
            "importance": importance,
            "tokens_since_resort": 0 if state is None else state.tokens_since_resort,
        }

    def load_state_dict(self, sae: Sae, saved: dict[str, Any]) -> None:
        values = saved.get("importance")
        state = self._state(sae)
        state.pending, state.tokens_since_resort = None, int(saved.get("tokens_since_resort", 0))
        if values is None:
            state.importance = None
            return
        importance = torch.tensor(values, dtype=torch.float32, device=sae.W_dec.device)
        if importance.shape != (sae.d_sae,):
            raise RunDirError(
                f"matryoshka state holds {tuple(importance.shape)} importances but the SAE has "
                f"d_sae={sae.d_sae}; the checkpoint belongs to a different SAE"
            )
        state.importance = importance

    def _state(self, sae: Sae) -> _SampledState:
        if sae not in self._states:
            self._states[sae] = _SampledState()
        return self._states[sae]


matryoshka_objective = register_objective("matryoshka")(MatryoshkaObjective())


def dead_columns(sae: Sae, dead_mask: Bool[Tensor, " d_sae"] | None) -> Int[Tensor, " n_dead"] | None:
    """Dead latent ids for AuxK, or None when AuxK is off (k_aux or aux_coef 0) or nothing is dead."""
    if dead_mask is None or sae.cfg.resolve_k_aux(sae.d_in) <= 0 or sae.cfg.aux_coef <= 0:
        return None
    dead_idx = torch.nonzero(dead_mask.to(sae.W_dec.device)).squeeze(1)
    return dead_idx if dead_idx.numel() > 0 else None


def resort_key(importance: Float[Tensor, " d_sae"]) -> Float[Tensor, " d_sae"]:
    """Importance rounded down to a log2 grid of RESORT_BINS_PER_OCTAVE steps; sorted stably, latents whose
    importance is within one bin keep their order. An exact sort moved ~all 16k latents every step
    (neighbours swap on EMA noise), costing 0.3-1.3 s per step at d_in=768 on 2 cores."""
    return torch.floor(torch.log2(importance) * RESORT_BINS_PER_OCTAVE)  # 0 → −inf: never-fired go last


@torch.no_grad()
def _latent_importance(code: SparseCode, W_dec: Float[Tensor, "d_sae d_in"]) -> Float[Tensor, " d_sae"]:
    """mean_b (z_i·||d_i||)² per latent — the norm-scaled activation energy Nabeshima sorts by."""
    norms = torch.linalg.vector_norm(W_dec.float(), dim=1)
    scaled = code.values.detach().float() * norms[code.indices]
    energy = torch.zeros(code.d_sae, device=scaled.device).index_add_(0, code.indices, scaled.pow(2))
    return energy / max(code.batch_size, 1)


def _step_output(loss, main, aux, per_prefix, prefixes, sampled, x, residual, code, dead_mask) -> StepOutput:
    with torch.no_grad():
        sq_err = residual.pow(2)
        fvu_batch = sq_err.sum() / (x - x.mean(dim=0)).pow(2).sum()
        l0 = code.l0_per_row().float().mean()
        stats = torch.stack([main, aux, loss, per_prefix[-1], sq_err.mean(), fvu_batch, l0]).detach()
        main_v, aux_v, total_v, fvu, mse, fvu_batch, l0 = stats.tolist()  # one device→host transfer
        prefix_v = per_prefix.detach().tolist()
    metrics = {"fvu": fvu, "fvu_batch": fvu_batch, "mse": mse, "l0": l0}
    if sampled:  # widths change every step: log the smallest prefix by position, with its width
        metrics.update(fvu_first_prefix=prefix_v[0], first_prefix=float(prefixes[0]))
    else:
        metrics.update({f"fvu_m{m}": v for m, v in zip(prefixes, prefix_v, strict=True)})
    metrics["n_dead"] = 0.0 if dead_mask is None else float(dead_mask.sum().item())
    return StepOutput(
        loss=loss,
        losses={"main": main_v, "aux": aux_v, "total": total_v},
        metrics=metrics,
        **firing(code),
    )


# ---------------------------------------------------------------------------------------- permutation

_LATENT_DIM = {"W_enc_T": 0, "b_enc": 0, "W_dec": 0}


@torch.no_grad()
def permute_latents_(
    sae: Sae,
    perm: Int[Tensor, " d_sae"],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    tracker=None,
    extra: list[Tensor] = (),
) -> bool:
    """Reorder latents in place so new latent p is old latent perm[p]; returns False when perm is identity.

    Moves encoder rows (W_enc_T), b_enc, W_dec rows, the threshold buffer, every optimizer state tensor
    shaped like those parameters (Adam exp_avg / exp_avg_sq / max_exp_avg_sq), the tracker's dead counters,
    the `extra` per-latent tensors, and calls `sae.activation.permute_latents_(perm)` when the activation
    keeps per-latent state of its own. Only the latents that actually move are copied.
    """
    perm = perm.to(device=sae.W_dec.device, dtype=torch.long)
    assert perm.shape == (sae.d_sae,), f"perm must have shape ({sae.d_sae},)"
    moved = torch.nonzero(perm != torch.arange(sae.d_sae, device=perm.device)).squeeze(1)
    if moved.numel() == 0:
        return False
    src = perm[moved]

    def move(t: Tensor, dim: int) -> None:
        # index_select copies first, so sources are read before any destination is overwritten
        t.index_copy_(dim, moved.to(t.device), t.index_select(dim, src.to(t.device)))

    for name, dim in _LATENT_DIM.items():
        param = getattr(sae, name)
        move(param.data, dim)
        if optimizer is not None:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, Tensor) and value.shape == param.shape:
                    move(value, dim)
    if sae.threshold is not None:
        move(sae.threshold, 0)
    for t in extra:
        move(t, 0)
    if tracker is not None:
        tracker.permute_(perm)
    if hasattr(sae.activation, "permute_latents_"):
        sae.activation.permute_latents_(perm)
    return True
