"""Dead-latent analysis: when latents stopped firing in training, and where their directions point.

- Timeline: from the dead-latent tracker saved in a training checkpoint (tokens since each latent last
  fired), the token at which each latent last fired and, for dead ones, when it crossed the dead window.
- Geometry: a dead latent's decoder row compared with the live ones (max cosine) and with the principal
  subspace of the activations (share of its direction inside the span of the top components explaining
  `variance` of the variance, algorithms.md §8) — a latent pointing where the data never goes cannot fire.
- Pre-activations of dead vs live latents on an activation sample, and their encoder biases.

    timeline = run_timeline("runs/demo/topk")              # DeadTimeline | None (needs a checkpoint)
    geo = dead_latent_geometry(sae.W_dec, dead_mask, acts_sample, variance=0.99)
    report = dead_report(timeline, geo, dead_mask)          # JSON-ready dict for export
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saekit.rundir import RunDir

logger = logging.getLogger(__name__)

BLOCK = 1024
"""Query latents per cosine block: [1024, d_sae] fp32 stays small even for d_sae in the millions."""


# ---------------------------------------------------------------------------------------- timeline


@dataclass
class DeadTimeline:
    """Per-latent firing history as of one training checkpoint."""

    step: int
    tokens: int
    """Training tokens seen when the checkpoint was written."""
    dead_tokens: int
    """The dead window: a latent is dead after this many tokens without firing."""
    tokens_since_fired: Int[Tensor, " d_sae"]
    last_fired_token: Int[Tensor, " d_sae"]
    """tokens − tokens_since_fired. The tracker starts every counter at 0, so a latent that never fired
    reads as "last fired at token 0"."""
    dead: Bool[Tensor, " d_sae"]
    died_at_token: Int[Tensor, " d_sae"]
    """last_fired_token + dead_tokens for dead latents (when the window ran out), −1 for live ones."""


def latent_timeline(
    tokens_since_fired: Int[Tensor, " d_sae"], tokens: int, dead_tokens: int, step: int = -1
) -> DeadTimeline:
    """Derive last-fired and time-of-death tokens from the tracker's counters."""
    since = torch.as_tensor(tokens_since_fired, dtype=torch.long)
    last = (int(tokens) - since).clamp(min=0)
    dead = since >= int(dead_tokens)
    died = torch.where(dead, last + int(dead_tokens), torch.full_like(last, -1))
    return DeadTimeline(step, int(tokens), int(dead_tokens), since, last, dead, died)


def run_timeline(run_dir: str | Path) -> DeadTimeline | None:
    """The timeline of a run's newest checkpoint (None when the run kept no checkpoint or tracker)."""
    run = RunDir(run_dir)
    state = run.trainer_state()
    if state is None or "dead_tracker" not in state:
        return None
    counts = (state["dead_tracker"] or {}).get("tokens_since_fired")
    if counts is None:
        return None
    dead_tokens = run.load_config().sae.dead_tokens
    return latent_timeline(torch.tensor(counts), state["tokens"], dead_tokens, step=int(state["step"]))


# ---------------------------------------------------------------------------------------- geometry


@torch.no_grad()
def max_cosine_to(
    W_dec: Float[Tensor, "d_sae d_in"], query: Int[Tensor, " n"], reference: Bool[Tensor, " d_sae"]
) -> Float[Tensor, " n"]:
    """For each query latent, the largest decoder cosine to a reference latent other than itself
    (−inf when there is no such latent)."""
    unit = torch.nn.functional.normalize(W_dec.detach().float(), dim=1)
    ref_ids = reference.nonzero().flatten()
    out = torch.full((query.numel(),), -torch.inf)
    if ref_ids.numel() == 0 or query.numel() == 0:
        return out
    ref = unit[ref_ids]
    for lo in range(0, query.numel(), BLOCK):
        q = query[lo : lo + BLOCK]
        cos = unit[q] @ ref.T
        cos[q[:, None] == ref_ids[None, :]] = -torch.inf  # a latent is not its own neighbour
        out[lo : lo + q.numel()] = cos.max(1).values
    return out


@torch.no_grad()
def subspace_share(W_dec: Float[Tensor, "n d_in"], basis: Float[Tensor, "d_in r"]) -> Float[Tensor, " n"]:
    """‖U_r U_rᵀ d‖² / ‖d‖² per row: the fraction of each direction inside span(basis) (orthonormal)."""
    rows = W_dec.detach().double()
    inside = (rows @ basis.double()).pow(2).sum(1)
    return (inside / rows.pow(2).sum(1).clamp_min(1e-30)).float()


@dataclass
class DeadGeometry:
    """Decoder geometry of dead vs live latents (per-latent arrays, indexed by `latents`)."""

    latents: Int[Tensor, " n"]
    dead: Bool[Tensor, " n"]
    max_cos_to_live: Float[Tensor, " n"]
    """Largest decoder cosine to a live latent (for live latents: to another live latent)."""
    subspace_share: Float[Tensor, " n"] | None
    """Share of the direction inside the activations' principal subspace (None without a sample)."""
    subspace_rank: int | None
    subspace_variance: float | None
    """Variance share the subspace actually explains (≥ the requested `variance`)."""


@torch.no_grad()
def dead_latent_geometry(
    W_dec: Float[Tensor, "d_sae d_in"],
    dead_mask: Bool[Tensor, " d_sae"],
    acts: Float[Tensor, "n d_in"] | None = None,
    *,
    variance: float = 0.99,
    max_live: int = 4096,
) -> DeadGeometry:
    """Geometry of every dead latent and of up to `max_live` live ones (a random, seeded subset, as a
    reference distribution). `acts`: raw or scaled activations (a global scale does not move the
    subspace); BOS rows should already be excluded, as in the cache."""
    dead_mask = dead_mask.bool().cpu()
    live = (~dead_mask).nonzero().flatten()
    if live.numel() > max_live:
        pick = torch.randperm(live.numel(), generator=torch.Generator().manual_seed(0))[:max_live]
        live = live[pick].sort().values
    latents = torch.cat([dead_mask.nonzero().flatten(), live])
    W = W_dec.detach().float().cpu()
    share, rank, explained = None, None, None
    if acts is not None and acts.shape[0] >= 2:
        from saekit.sae.subspace import principal_subspace

        basis, rank, explained = principal_subspace(acts.float().cpu(), variance)
        share = subspace_share(W[latents], basis)
    return DeadGeometry(
        latents=latents,
        dead=dead_mask[latents],
        max_cos_to_live=max_cosine_to(W, latents, ~dead_mask),
        subspace_share=share,
        subspace_rank=rank,
        subspace_variance=explained,
    )


@torch.no_grad()
def preactivations_by_status(
    sae: Any,
    acts: Float[Tensor, "n d_in"],
    dead_mask: Bool[Tensor, " d_sae"],
    *,
    max_values: int = 20_000,
) -> dict[str, Tensor]:
    """Pre-activations h = (c·x − b_dec) W_enc + b_enc of dead and live latents on raw `acts`, each
    flattened and subsampled (seeded) to at most `max_values` values, plus each group's b_enc."""
    x = sae.scale_input(acts.to(sae.W_enc.device))
    h = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).float().cpu()
    dead_mask = dead_mask.bool().cpu()
    generator = torch.Generator().manual_seed(0)
    out: dict[str, Tensor] = {}
    for name, mask in (("dead", dead_mask), ("live", ~dead_mask)):
        values = h[:, mask].flatten()
        if values.numel() > max_values:
            values = values[torch.randperm(values.numel(), generator=generator)[:max_values]]
        out[f"{name}_preacts"] = values
        out[f"{name}_b_enc"] = sae.b_enc.detach().float().cpu()[mask]
    return out


def run_activation_sample(run_dir: str | Path, n: int = 4096) -> Float[Tensor, "n d_in"] | None:
    """The first `n` rows of the run's training cache (raw activations, BOS excluded at collection),
    or None when the run trained live or its cache is gone."""
    cfg = RunDir(run_dir).load_config()
    if not cfg.cache_dir:
        return None
    from saekit.activations import open_cache

    try:
        return open_cache(cfg.cache_dir, cfg.hookpoint).rows(n)
    except Exception as err:  # a moved or deleted cache only disables the geometry views
        logger.warning("no activation sample for %s: %s", run_dir, err)
        return None


# ---------------------------------------------------------------------------------------- export


def dead_report(
    dead_mask: Bool[Tensor, " d_sae"],
    *,
    source: str,
    timeline: DeadTimeline | None = None,
    geometry: DeadGeometry | None = None,
) -> dict[str, Any]:
    """A JSON-ready summary: the dead latents, how the mask was defined, and per-latent details."""
    dead_ids = dead_mask.bool().nonzero().flatten().tolist()
    per_latent: dict[int, dict[str, Any]] = {i: {"latent": i} for i in dead_ids}
    if timeline is not None:
        for i in dead_ids:
            per_latent[i]["last_fired_token"] = int(timeline.last_fired_token[i])
            per_latent[i]["tokens_since_fired"] = int(timeline.tokens_since_fired[i])
            per_latent[i]["died_at_token"] = int(timeline.died_at_token[i])
    if geometry is not None:
        for j, i in enumerate(geometry.latents.tolist()):
            if i in per_latent:
                cos = float(geometry.max_cos_to_live[j])
                per_latent[i]["max_cos_to_live"] = cos if cos > -1.5 else None
                if geometry.subspace_share is not None:
                    per_latent[i]["subspace_share"] = float(geometry.subspace_share[j])
    return {
        "source": source,
        "d_sae": int(dead_mask.numel()),
        "dead_count": len(dead_ids),
        "dead_fraction": len(dead_ids) / max(int(dead_mask.numel()), 1),
        "timeline": None
        if timeline is None
        else {"step": timeline.step, "tokens": timeline.tokens, "dead_tokens": timeline.dead_tokens},
        "subspace": None
        if geometry is None or geometry.subspace_rank is None
        else {"rank": geometry.subspace_rank, "explained_variance": geometry.subspace_variance},
        "latents": [per_latent[i] for i in dead_ids],
    }
