"""Matryoshka SAE (algorithms.md §3.1-3.2): nested dictionary prefixes that must each reconstruct alone.

Reconstruction g may use only latents [0, m_g). All prefixes come from ONE encoder pass and ONE sparse
decode: every selected entry is put in a bag (block, row), where block g holds the latents [m_{g−1}, m_g);
`sparse_decode` sums each bag, and the nested losses accumulate the block sums in order (residual
r_g = r_{g−1} − s_g), so the G prefix reconstructions are never materialised; that prefix math lives in
`saekit.sae.prefixes`. This module holds the section, the objective, the latent re-sorting and the
declaration. The selection rule is a key (`activation`, BatchTopK by default as in the paper).

Loss: L = Σ_g w_g·L_g + α·L_aux with L_g = (1/B)·Σ_b ||x_b − x̂_g,b||² / E||x − x̄||², i.e. the per-token
squared-error sum averaged over the batch, divided by the fixed per-token total variance d/mse_scale of
the training sample. So L_g is prefix g's FVU against a fixed denominator — the same units as the TopK
main term, which keeps α = 1/32 meaningful. AuxK models the residual of the full-width reconstruction.

`prefix_mode: fixed` uses `prefixes` (default [n/16, n/8, n/4, n/2, n]) with `prefix_weights` (default
1/G). `prefix_mode: sampled` (Nabeshima) draws new cut points every step and, in `post_step`, re-sorts
latents by an EMA of their importance — permuting weights, threshold and Adam moments together (and
returning the permutation so the trainer moves its dead-latent counters) so the model and the next
optimiser step are unchanged by the re-sort. The EMA is an attribute of the run's objective.

    sae = Sae(d_in, SaeConfig.make("matryoshka", k=32, prefix_mode="sampled"))
    objective = make_objective(sae.cfg)
    out = objective(sae, batch, dead_mask=tracker.dead_mask(), mse_scale=s)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saekit.config_io import require
from saekit.errors import RunDirError
from saekit.sae.method import LevelReport, Method, register_method
from saekit.sae.methods.selection import SelectionParams, make_selection
from saekit.sae.model import Sae
from saekit.sae.objective import Objective, StepOutput, aux_settings, auxk_loss, dead_columns, firing
from saekit.sae.prefixes import (
    nested_losses,
    nested_residual,
    prefix_block_sums,
    prefix_blocks,
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
RESORT_EVERY_TOKENS = 32_768
"""Sampled mode: physically re-sort latents once this many tokens have passed (see MatryoshkaObjective)."""


@dataclass(frozen=True)
class MatryoshkaParams(SelectionParams):
    prefixes: tuple[int, ...] | None = None
    """Fixed prefix widths (strictly increasing, last = d_sae); null: [n/16, n/8, n/4, n/2, n]."""
    prefix_weights: tuple[float, ...] | None = None
    """Per-prefix loss weights (fixed mode); null means 1/G each."""
    prefix_mode: Literal["fixed", "sampled"] = "fixed"
    """Fixed groups (Bussmann et al.), or prefixes sampled every step with latent re-sorting (Nabeshima)."""
    n_sampled_prefixes: int = 10
    """Sampled mode: prefixes drawn per step (the full width included)."""
    min_prefix_length: int = 1
    """Sampled mode: the shortest prefix that may be drawn."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_sampled_prefixes >= 1, "n_sampled_prefixes", "must be >= 1")
        require(self.min_prefix_length >= 1, "min_prefix_length", "must be >= 1")


class MatryoshkaObjective(Objective):
    """Σ_g w_g L_g + aux_coef·L_aux, with a `post_step` that re-sorts latents in sampled mode.

    The sampled mode updates the importance EMA every step but physically re-sorts latents only once
    `resort_every_tokens` have passed since the last re-sort (and on the first step). Any change of order
    shifts whole ranges of latents, so a re-sort moves nearly all of them: 0.3-1.3 s at d_sae=16384,
    d_in=768 on 2 cores (weights and both Adam moments), i.e. +20-50 % per step if done every step as in
    Nabeshima's GPU code. With the EMA's ~20-step memory, an order up to 8 batches of 4096 old changes which
    latents fall in a sampled prefix very little.
    """

    def __init__(self, params: MatryoshkaParams, resort_every_tokens: int = RESORT_EVERY_TOKENS) -> None:
        super().__init__(params)
        self.resort_every_tokens = resort_every_tokens
        self.sampled = params.prefix_mode == "sampled"
        self.importance: Float[Tensor, " d_sae"] | None = None
        """EMA of mean_b (z_i·||d_i||)², in the current latent order (sampled mode)."""
        self.pending: Float[Tensor, " d_sae"] | None = None
        """This step's importance, folded into the EMA by post_step."""
        self.pending_tokens = 0
        self.tokens_since_resort = 0
        self.prefixes: list[int] | None = None
        """Override the widths of the next calls (tests); None: configured or sampled."""

    def __call__(
        self, sae: Sae, batch: Batch, *, dead_mask: Bool[Tensor, " d_sae"] | None, mse_scale: float
    ) -> StepOutput:
        prefixes = self.prefixes or self._widths(sae.d_sae)
        # Sampled widths change every step, so per-width weights cannot be configured: 1/G (Nabeshima).
        n = len(prefixes)
        weights = [1.0 / n] * n if self.sampled else resolve_prefix_weights(self.params.prefix_weights, n)
        k_aux, aux_coef = aux_settings(self.params, sae.d_in)
        x = batch.acts.to(sae.W_dec.dtype)
        dead_idx = dead_columns(dead_mask, x.device) if k_aux > 0 and aux_coef > 0 else None
        enc = sae.activation.encode(sae, x, batch=batch, training=sae.training, aux_columns=dead_idx)
        sums = prefix_block_sums(enc.code, sae.W_dec, prefixes)
        per_prefix = nested_losses(x, sae.b_dec, sums, mse_scale)
        main = (torch.tensor(weights, device=x.device) * per_prefix).sum()
        residual = nested_residual(x, sae.b_dec, sums, len(prefixes) - 1)
        aux = torch.zeros((), device=x.device)
        if dead_idx is not None:
            aux = auxk_loss(sae, x, residual, enc.aux_pre_acts, dead_idx, k_aux)
        loss = main + aux_coef * aux
        if self.sampled:
            self.pending, self.pending_tokens = _latent_importance(enc.code, sae.W_dec), len(batch)
        return _step_output(
            loss, main, aux, per_prefix, prefixes, self.sampled, x, residual, enc.code, dead_mask
        )

    def _widths(self, d_sae: int) -> list[int]:
        p = self.params
        if self.sampled:
            return sample_prefixes(d_sae, p.n_sampled_prefixes, p.min_prefix_length)
        return resolve_prefixes(p.prefixes, d_sae)

    def post_step(self, sae: Sae, optimizer: torch.optim.Optimizer, out: StepOutput) -> Tensor | None:
        """Sampled mode: fold this step's importance into the EMA; when due, re-sort latents by it
        (descending) — weights, threshold, Adam moments and the EMA move together — and return the
        permutation (the trainer moves its dead counters). Also permutes `out.fired`/`out.fire_counts`."""
        if not self.sampled or self.pending is None:
            return None
        fresh, old = self.pending, self.importance
        self.importance = fresh if old is None else (1 - IMPORTANCE_EMA) * old + IMPORTANCE_EMA * fresh
        self.pending = None
        self.tokens_since_resort += self.pending_tokens
        if old is not None and self.tokens_since_resort < self.resort_every_tokens:
            return None
        self.tokens_since_resort = 0
        perm = torch.sort(resort_key(self.importance), descending=True, stable=True).indices
        if not permute_latents_(sae, perm, optimizer=optimizer, extra=[self.importance]):
            return None
        out.fired = out.fired[perm.to(out.fired.device)]
        if out.fire_counts is not None:
            out.fire_counts = out.fire_counts[perm.to(out.fire_counts.device)]
        return perm

    def state_dict(self) -> dict[str, Any]:
        """Sampled-mode state for trainer checkpoints, JSON-native (fp32 values round-trip exactly)."""
        importance = None if self.importance is None else self.importance.cpu().tolist()
        return {"importance": importance, "tokens_since_resort": self.tokens_since_resort}

    def load_state_dict(self, state: dict[str, Any], sae: Sae) -> None:
        values = state.get("importance")
        self.pending, self.tokens_since_resort = None, int(state.get("tokens_since_resort", 0))
        if values is None:
            self.importance = None
            return
        importance = torch.tensor(values, dtype=torch.float32, device=sae.W_dec.device)
        if importance.shape != (sae.d_sae,):
            raise RunDirError(
                f"matryoshka state holds {tuple(importance.shape)} importances but the SAE has "
                f"d_sae={sae.d_sae}; the checkpoint belongs to a different SAE"
            )
        self.importance = importance


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

LATENT_PARAMS = ("W_enc_T", "b_enc", "W_dec")
"""Parameters whose dim 0 is the latent (a trained `threshold` joins them)."""


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

    trained_threshold = isinstance(sae.threshold, torch.nn.Parameter)
    for name in [*LATENT_PARAMS, "threshold"] if trained_threshold else LATENT_PARAMS:
        param = getattr(sae, name)
        move(param.data, 0)
        if optimizer is not None:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, Tensor) and value.shape == param.shape:
                    move(value, 0)
    if sae.threshold is not None and not trained_threshold:
        move(sae.threshold, 0)
    for t in extra:
        move(t, 0)
    if tracker is not None:
        tracker.permute_(perm)
    sae.activation.permute_latents_(perm)
    return True


# ---------------------------------------------------------------------------------------- declaration


def report_widths(sae: Sae) -> list[int]:
    """Prefix widths evaluation reports: the configured ones, else the default n/16 … n grid (sampled runs
    included, whose training widths changed every step)."""
    return resolve_prefixes(sae.cfg.params.prefixes, sae.d_sae)


def prefix_levels(sae: Sae, x: Tensor, widths: list[int]) -> tuple[Tensor, Tensor]:
    """x̂ using only latents < m_g of the inference code, and the active latents below each width."""
    code = sae.encode_normalized(x, training=False)
    x_hats = prefix_reconstructions(code, sae.W_dec, sae.b_dec, widths)
    blocks = prefix_blocks(code.indices, widths)
    active = (code.values > 0).double()
    per_block = torch.zeros(len(widths), dtype=torch.float64, device=x.device).index_add_(0, blocks, active)
    return x_hats, per_block.cumsum(0)


MATRYOSHKA = register_method(
    Method(
        name="matryoshka",
        params=MatryoshkaParams,
        activation=make_selection,
        objective=MatryoshkaObjective,
        summary="Matryoshka SAE (Bussmann et al. 2025; Nabeshima 2024): nested prefixes reconstruct alone",
        levels=LevelReport(
            kind="prefix",
            levels=report_widths,
            reconstruct=prefix_levels,
            definition=(
                "x_hat uses only latents < width of the inference code; l0 counts active latents < width"
            ),
        ),
    )
)
