"""Training objectives: the loss of one method, built once per run so its state is plain attributes.

An objective turns a batch into a `StepOutput` (loss to backpropagate, logged terms, which latents fired);
`post_step` runs after the optimiser step (e.g. Matryoshka re-sorting returns the permutation it applied,
so the trainer can move its own per-latent counters too); `state_dict`/`load_state_dict` carry its state
through checkpoints as JSON-native data. `ReconstructionAuxK` (FVU + AuxK, Gao et al.) serves most methods.

Contract: `batch.acts` is already in the SAE's normalised space (`Sae.scale_batch`). All losses and metrics
are fp32. The main term is FVU with a fixed denominator (Gao et al., algorithms.md §1.4):
`mse_scale = 1 / mean((x − x̄)²)`, computed once on a normalised sample (`mse_scale_from_sample`).

    objective = make_objective(sae.cfg)            # a fresh object for this run
    out = objective(sae, batch, dead_mask=tracker.dead_mask(), mse_scale=s)
    out.loss.backward(); perm = objective.post_step(sae, optimizer, out)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saekit.errors import DataError
from saekit.kernels import encode_selected, sparse_decode
from saekit.types import Batch, SparseCode

if TYPE_CHECKING:
    from saekit.sae.config import SaeConfig
    from saekit.sae.model import Sae

logger = logging.getLogger(__name__)

FIRE_THRESHOLD = 1e-3
"""A latent fires in a step when selected with a value above this in at least one row (Gao et al.)."""


@dataclass
class StepOutput:
    loss: Tensor
    """Scalar to call backward() on."""
    losses: dict[str, float]
    """Loss terms as floats (e.g. main, aux, total)."""
    metrics: dict[str, float]
    """fvu, l0, mse, …, as floats."""
    fired: Bool[Tensor, " d_sae"]
    """Latents selected with value > 1e-3 in at least one row of this batch."""
    fire_counts: Int[Tensor, " d_sae"] | None = None
    """Rows of this batch on which each latent fired (value > 1e-3); feeds the dense fraction log."""


class Objective:
    """Base objective. Subclasses implement `__call__`; the hooks default to "nothing to do"."""

    def __init__(self, params: Any) -> None:
        self.params = params

    def __call__(
        self, sae: Sae, batch: Batch, *, dead_mask: Bool[Tensor, " d_sae"] | None, mse_scale: float
    ) -> StepOutput:
        raise NotImplementedError

    def post_step(self, sae: Sae, optimizer: torch.optim.Optimizer, out: StepOutput) -> Tensor | None:
        """Called after the constrained optimiser step; returns a latent permutation it applied, or None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """JSON-native state for trainer checkpoints (empty for stateless objectives)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], sae: Sae) -> None:
        """Restore what `state_dict` returned (checked against `sae`'s shape)."""


def make_objective(cfg: SaeConfig) -> Objective:
    """A fresh objective for one training run of an SAE configured by `cfg`."""
    from saekit.sae.method import get_method

    return get_method(cfg.method).objective(cfg.params)


def mse_scale_from_sample(x: Float[Tensor, "n d_in"]) -> float:
    """1 / mean over rows and dims of (x − x̄)², in fp64 — the fixed FVU denominator of the main loss."""
    x = x.detach().to(torch.float64)
    var = (x - x.mean(dim=0)).pow(2).mean().item()
    if not var > 0:
        raise DataError(
            "activation sample has zero variance; cannot normalise the loss (need > 1 distinct row)"
        )
    return 1.0 / var


@torch.no_grad()
def fire_counts(code: SparseCode) -> Int[Tensor, " d_sae"]:
    """Per latent, the number of code entries with a value above FIRE_THRESHOLD (rows it fired on)."""
    return torch.bincount(code.indices[code.values > FIRE_THRESHOLD], minlength=code.d_sae)


def firing(code: SparseCode) -> dict[str, Tensor]:
    """`fired` and `fire_counts` for a StepOutput: `StepOutput(..., **firing(code))`."""
    counts = fire_counts(code)
    return {"fired": counts > 0, "fire_counts": counts}


AUXK_DENSE_MIN_FILL = 0.25
"""Use the dense dead-column path when min(k_aux, n_dead) / n_dead is at least this (see auxk_loss).
Measured at B=4096, d_in=768, d_sae=16384, k_aux=256, 2 cores (AuxK forward+backward, dense vs sparse):
164 dead 0.08 s vs 0.84 s; 820 dead 0.79 vs 1.03; 1638 dead 1.21 vs 1.01; 4096 dead 2.33 vs 1.24."""


@torch.no_grad()
def auxk_selection(
    aux_pre_acts: Float[Tensor, "batch n_dead"], dead_idx: Int[Tensor, " n_dead"], k_aux: int, d_sae: int
) -> SparseCode:
    """Top min(k_aux, n_dead) entries of every row of h[:, dead_idx], as global latent ids."""
    k = min(k_aux, dead_idx.numel())
    values, local = torch.topk(aux_pre_acts, k, dim=1, sorted=False)
    return SparseCode.from_topk(values, dead_idx[local], d_sae)


def auxk_loss(
    sae: Sae,
    x: Float[Tensor, "batch d_in"],
    residual: Float[Tensor, "batch d_in"],
    aux_pre_acts: Float[Tensor, "batch n_dead"],
    dead_idx: Int[Tensor, " n_dead"],
    k_aux: int,
    *,
    weights: Float[Tensor, " n_dead"] | None = None,
    dense: bool | None = None,
) -> Float[Tensor, ""]:
    """AuxK (Gao et al. §A.2, algorithms.md §1.4): the top min(k_aux, n_dead) dead latents per row model the
    detached residual e = x − x̂, decoded WITHOUT b_dec; normalised by the batch variance of e.

    `aux_pre_acts` is h[:, dead_idx] (sliced before h was freed), so the top-k runs over the dead columns
    only — a masked top-k over all of h costs about two encoder GEMMs at k_aux=384 (design.md §5).
    Gradients reach only the selected dead latents' W_enc columns, b_enc entries and W_dec rows (and b_dec
    through the encoder input). A non-finite value (e.g. a batch of one row, zero variance) becomes 0,
    with no graph attached so no NaN reaches the gradients.

    Two exact implementations: when each row selects a large share of the dead columns (always the case
    when n_dead ≤ k_aux, e.g. 1 % dead), the aux code is effectively a dense [B, n_dead] block and small
    GEMMs over it beat gathering B·k rows; otherwise the sparse kernels are used. `dense` forces one.

    `weights` (one per column of `dead_idx`) scale each selected latent's ReLU value before the
    decode (aux_zipf); None is plain AuxK and skips the multiplication.
    """
    e = residual.detach().float()
    k = min(k_aux, dead_idx.numel())
    if dense is None:
        dense = k >= AUXK_DENSE_MIN_FILL * dead_idx.numel()
    if dense:
        e_hat = _aux_reconstruction_dense(sae, x, aux_pre_acts, dead_idx, k, weights)
    else:
        sel = auxk_selection(aux_pre_acts, dead_idx, k, sae.d_sae)
        pre = encode_selected(x, sae.W_enc, sae.b_enc, sae.b_dec, sel.row_ids(), sel.indices, sel.values)
        values = torch.relu(pre)
        if weights is not None:  # per-column weights scattered to global latent ids, read at the selection
            full = torch.zeros(sae.d_sae, dtype=weights.dtype, device=weights.device)
            values = values * full.index_copy_(0, dead_idx, weights)[sel.indices]
        e_hat = sparse_decode(sel.indices, values, sel.offsets, sae.W_dec, None)
    loss = (e_hat - e).pow(2).mean() / (e - e.mean(dim=0)).pow(2).mean()
    if not torch.isfinite(loss).item():
        logger.debug("AuxK loss was non-finite (%s); using 0 for this step", loss.item())
        return torch.zeros((), device=x.device)
    return loss


def _aux_reconstruction_dense(
    sae: Sae,
    x: Float[Tensor, "batch d_in"],
    aux_pre_acts: Float[Tensor, "batch n_dead"],
    dead_idx: Int[Tensor, " n_dead"],
    k: int,
    weights: Float[Tensor, " n_dead"] | None,
) -> Float[Tensor, "batch d_in"]:
    """ê = (ReLU(h_dead) [⊙ weights] ⊙ top-k mask) W_dec[dead], with h_dead recomputed under autograd by one
    small GEMM over the dead encoder columns (B·n_dead·d_in), so gradients flow to exactly those
    columns/rows."""
    # Row lookups with sparse gradients: the dead rows' gradients are added into the dense ones the main
    # term produces, instead of each being scattered into a zero-filled [d_sae, d_in] tensor first.
    W_sub = F.embedding(dead_idx, sae.W_enc_T, sparse=True).t()  # rows of the latent-major storage
    h = torch.addmm(sae.b_enc.index_select(0, dead_idx), x - sae.b_dec, W_sub)
    z = torch.relu(h)
    if weights is not None:
        z = z * weights
    if k < dead_idx.numel():
        with torch.no_grad():  # select on the same values the sparse path would use
            keep = torch.zeros_like(aux_pre_acts, dtype=torch.bool)
            keep.scatter_(1, torch.topk(aux_pre_acts, k, dim=1, sorted=False).indices, True)
        z = z * keep
    return z @ F.embedding(dead_idx, sae.W_dec, sparse=True)


class ReconstructionAuxK(Objective):
    """L = mse_scale·mean((x̂ − x)²) + aux_coef·L_aux on normalised `batch.acts` (Gao et al.): the objective of
    TopK, BatchTopK, Mutual/Feature Choice and g-SAE. AuxK costs nothing when no latent is dead; params
    without `k_aux` (or k_aux / aux_coef 0) train the plain FVU term."""

    def __call__(
        self, sae: Sae, batch: Batch, *, dead_mask: Bool[Tensor, " d_sae"] | None, mse_scale: float
    ) -> StepOutput:
        k_aux, aux_coef = aux_settings(self.params, sae.d_in)
        x = batch.acts.to(sae.W_dec.dtype)
        dead_idx = dead_columns(dead_mask, x.device) if k_aux > 0 and aux_coef > 0 else None
        out = sae(x, batch, aux_columns=dead_idx)
        main = mse_scale * (out.x_hat - x).pow(2).mean()
        aux = torch.zeros((), device=x.device)
        if dead_idx is not None:
            aux = auxk_loss(sae, x, x - out.x_hat, out.aux_pre_acts, dead_idx, k_aux)
        loss = main + aux_coef * aux
        losses, metrics = step_metrics(x, out.x_hat, out.code, {"main": main, "aux": aux, "total": loss})
        metrics["fvu"] = losses["main"]  # the main term is FVU with the fixed (dataset) denominator
        metrics["n_dead"] = 0.0 if dead_mask is None else float(dead_mask.sum().item())
        return StepOutput(loss=loss, losses=losses, metrics=metrics, **firing(out.code))


def aux_settings(params: Any, d_in: int) -> tuple[int, float]:
    """(k_aux, aux_coef) of a method section; (0, 0) when the method has no AuxK keys."""
    if not hasattr(params, "resolve_k_aux"):
        return 0, 0.0
    return params.resolve_k_aux(d_in), float(params.aux_coef)


def dead_columns(dead_mask: Bool[Tensor, " d_sae"] | None, device: torch.device) -> Int[Tensor, " n"] | None:
    """Indices of dead latents, or None when there are none (AuxK is then skipped entirely)."""
    if dead_mask is None:
        return None
    idx = torch.nonzero(dead_mask.to(device)).squeeze(1)
    return idx if idx.numel() > 0 else None


@torch.no_grad()
def step_metrics(
    x: Float[Tensor, "batch d_in"],
    x_hat: Float[Tensor, "batch d_in"],
    code: SparseCode,
    losses: dict[str, Tensor],
) -> tuple[dict[str, float], dict[str, float]]:
    """Loss terms and reconstruction metrics (fp32) as floats, in one device→host transfer."""
    sq_err = (x_hat - x).float().pow(2)
    batch_var_sum = (x - x.mean(dim=0)).float().pow(2).sum()
    values = [t.detach().float().reshape(()) for t in losses.values()]
    values += [sq_err.mean(), sq_err.sum() / batch_var_sum, code.l0_per_row().float().mean()]
    floats = torch.stack(values).tolist()
    n = len(losses)
    mse, fvu_batch, l0 = floats[n:]
    return dict(zip(losses, floats[:n], strict=True)), {"mse": mse, "fvu_batch": fvu_batch, "l0": l0}
