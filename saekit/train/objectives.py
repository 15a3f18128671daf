"""Training objectives: `objective(sae, batch, **kw) -> StepOutput`, looked up by name in one registry.

Objectives change the loss, never the model (style.md §2): TopK+AuxK now; Matryoshka, Multi-TopK and
HierarchicalTopK plug in with `@register_objective` and reuse `auxk_loss` / `firing`.

Contract: `batch.acts` is already in the SAE's normalised space (raw activations times `sae.act_scale`;
the trainer scales each batch). All losses and metrics are fp32. The main term is FVU with a fixed
denominator (Gao et al., algorithms.md §1.4): `mse_scale = 1 / mean((x − x̄)²)`, computed once by the
trainer on a normalised sample (`mse_scale_from_sample`). AuxK settings default to the SAE's config.

    objective = get_objective(sae.cfg)            # or by name: get_objective("topk_auxk")
    out = objective(sae, batch, dead_mask=tracker.dead_mask(), mse_scale=s)
    out.loss.backward(); tracker.update(out.fired, len(batch), counts=out.fire_counts)
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saekit.config import SaeConfig
from saekit.errors import ConfigError, DataError
from saekit.kernels import encode_selected, sparse_decode
from saekit.sae.activations import Selection, load_method_modules
from saekit.sae.model import Sae
from saekit.types import Batch, SparseCode

logger = logging.getLogger(__name__)

FIRE_THRESHOLD = 1e-3
"""A latent fires in a step when selected with a value above this in at least one row (Gao et al.)."""

DEFAULT_OBJECTIVE = "topk_auxk"

Objective = Callable[..., "StepOutput"]
OBJECTIVES: dict[str, Objective] = {}


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


def register_objective(name: str) -> Callable[[Objective], Objective]:
    def add(fn: Objective) -> Objective:
        if name in OBJECTIVES and OBJECTIVES[name] is not fn:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = fn
        return fn

    return add


def get_objective(name_or_cfg: str | SaeConfig) -> Objective:
    """Objective by registry name, or the one an SaeConfig trains with (`topk_auxk` for every current
    activation; a config field can pick others once Matryoshka & co. exist)."""
    name = name_or_cfg if isinstance(name_or_cfg, str) else DEFAULT_OBJECTIVE
    if name not in OBJECTIVES:
        load_method_modules()
    if name not in OBJECTIVES:
        close = difflib.get_close_matches(name, OBJECTIVES, n=3)
        hint = (
            f"did you mean {', '.join(map(repr, close))}?" if close else f"choose from {sorted(OBJECTIVES)}"
        )
        raise ConfigError(f"unknown objective {name!r}; {hint}")
    return OBJECTIVES[name]


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
    aux_pre_acts: Float[Tensor, "batch n_dead"], dead_idx: Int[Tensor, " n_dead"], k_aux: int
) -> Selection:
    """Top min(k_aux, n_dead) entries of every row of h[:, dead_idx], as global latent ids."""
    k = min(k_aux, dead_idx.numel())
    values, local = torch.topk(aux_pre_acts, k, dim=1, sorted=False)
    return Selection.from_topk(values, dead_idx[local])


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
        sel = auxk_selection(aux_pre_acts, dead_idx, k)
        pre = encode_selected(x, sae.W_enc, sae.b_enc, sae.b_dec, sel.rows, sel.indices, sel.pre_acts)
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
    W_sub = sae.W_enc_T.index_select(0, dead_idx).t()  # contiguous rows of the latent-major storage
    h = torch.addmm(sae.b_enc.index_select(0, dead_idx), x - sae.b_dec, W_sub)
    z = torch.relu(h)
    if weights is not None:
        z = z * weights
    if k < dead_idx.numel():
        with torch.no_grad():  # select on the same values the sparse path would use
            keep = torch.zeros_like(aux_pre_acts, dtype=torch.bool)
            keep.scatter_(1, torch.topk(aux_pre_acts, k, dim=1, sorted=False).indices, True)
        z = z * keep
    return z @ sae.W_dec.index_select(0, dead_idx)


@register_objective("topk_auxk")
def topk_auxk_objective(
    sae: Sae,
    batch: Batch,
    *,
    dead_mask: Bool[Tensor, " d_sae"] | None,
    mse_scale: float,
    aux_coef: float | None = None,
    k_aux: int | None = None,
) -> StepOutput:
    """L = mse_scale·mean((x̂ − x)²) + aux_coef·L_aux on normalised `batch.acts`; AuxK costs nothing when
    no latent is dead (or k_aux / aux_coef is 0). aux_coef / k_aux default to sae.cfg (aux_coef,
    resolve_k_aux). Works with any activation (TopK, BatchTopK, …)."""
    aux_coef = sae.cfg.aux_coef if aux_coef is None else aux_coef
    k_aux = sae.cfg.resolve_k_aux(sae.d_in) if k_aux is None else k_aux
    x = batch.acts.to(sae.W_dec.dtype)
    use_aux = dead_mask is not None and k_aux > 0 and aux_coef > 0
    dead_idx = dead_columns(dead_mask, x.device) if use_aux else None
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
