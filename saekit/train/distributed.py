"""Data-parallel training under `torchrun`: what keeps N ranks training one SAE as if they were one process.

    torchrun --nproc-per-node 2 -m saekit train configs/topk.yaml      # gloo on CPU, nccl with device: cuda

`batch_size` stays the *global* batch B. Rank r reads rows [B·r/N, B·(r+1)/N) of every batch the one-process
reader would deliver (`saekit.activations.shuffle`), so the ranks together see exactly the rows one process
sees, each row of an epoch once. After backward, `GradSync` (the `sync` hook of `training_step`) runs one
all-reduce per dtype carrying:

- Σ_r n_r·∇_r / Σ_r n_r: the gradient of the mean over the global batch (n_r = rank r's rows), so every rank
  takes the same Adam step and keeps identical weights; with the fixed FVU denominator (mse_scale) this is
  the single-process gradient up to fp32 summation order;
- Σ_r n_r (the global token count that the trainer and the dead-latent counters add up) and the per-latent
  firing counts, so dead-latent counters and logged frequencies are global and identical on every rank;
- the mean over ranks of the SAE's floating buffers (the thresholds BatchTopK/Feature Choice learn by EMA)
  and of the objective's floating tensor attributes (e.g. aux_zipf's frequency EMA, Matryoshka's latent
  importance), so they too are identical on every rank.

Batch-coupled methods select over the rank's own rows (a documented choice, tested in
tests/test_distributed.py against a one-process replay of exactly this rule):
- BatchTopK / Mutual Choice keep the top (B/N)·k entries of each rank's part, not the top B·k of the global
  batch; θ observes the mean over ranks of each rank's smallest selected value (the global B·k-th value lies
  between the smallest and largest of those).
- Feature Choice: each latent keeps its m best tokens of each rank's part (m from the rank's row count), so up
  to N·m per global batch; θ_i is averaged the same way.
- AuxK normalises by the variance of the residual over the rank's rows.
So only row-independent methods (TopK, Matryoshka fixed, JumpReLU, ...) reproduce a single-process run.

Logged metrics are window means averaged over ranks (`mean_over_ranks`); rank 0 alone writes config.yaml,
metrics.jsonl, checkpoints and final/, and holds the run-directory lock. A checkpoint records the world size;
`--resume` refuses another one (`check_world_size`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.errors import ConfigError, RunDirError
from saekit.ranks import Ranks
from saekit.sae import Objective, Sae, StepOutput


class GradSync:
    """`training_step`'s sync hook for N > 1 ranks; `rows` is the last step's global row count."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks
        self.rows = 0

    @torch.no_grad()
    def __call__(self, sae: Sae, objective: Objective, out: StepOutput, n_rows: int) -> int:
        params = list(sae.parameters())
        device = params[0].device
        had_grad = [p.grad is not None for p in params]
        grads = [p.grad * n_rows if p.grad is not None else torch.zeros_like(p) for p in params]
        counts = out.fire_counts if out.fire_counts is not None else out.fired
        shared = shared_state(sae, objective)
        inv_world = 1.0 / self.ranks.world_size
        head = [torch.tensor(had_grad + [n_rows], dtype=torch.float32, device=device), counts.float()]
        n = len(params)
        reduced = self._all_reduce([*grads, *head, *(t * inv_world for t in shared)])
        flags, counts = reduced[n], reduced[n + 1]
        total = int(round(float(flags[-1])))
        for param, grad, present in zip(params, reduced[:n], flags[:-1].tolist(), strict=True):
            param.grad = grad.div_(total) if present > 0 else None  # None where no rank had a gradient
        global_counts = counts.round().long()
        out.fired = global_counts > 0
        if out.fire_counts is not None:
            out.fire_counts = global_counts
        for tensor, mean in zip(shared, reduced[n + 2 :], strict=True):
            tensor.copy_(mean)
        self.rows = total
        return total

    def _all_reduce(self, tensors: list[Tensor]) -> list[Tensor]:
        """Sum every tensor over ranks with one all-reduce per (dtype, device); same shapes back."""
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for index, tensor in enumerate(tensors):
            groups.setdefault((tensor.dtype, tensor.device), []).append(index)
        result: list[Tensor | None] = [None] * len(tensors)
        for members in groups.values():
            flat = torch.cat([tensors[i].reshape(-1) for i in members])
            self.ranks.all_reduce_sum_(flat)
            parts = flat.split([tensors[i].numel() for i in members])
            for i, part in zip(members, parts, strict=True):
                result[i] = part.view(tensors[i].shape)
        return result  # type: ignore[return-value]


def shared_state(sae: Sae, objective: Objective) -> list[Tensor]:
    """State the forward pass updates from the rank's own rows, to be averaged over ranks: the SAE's floating
    buffers and the objective's floating tensor attributes (in a fixed order, the same on every rank)."""
    buffers = [b for _, b in sorted(sae.named_buffers()) if b.is_floating_point()]
    attributes = [
        value
        for _, value in sorted(vars(objective).items())
        if isinstance(value, Tensor) and value.is_floating_point()
    ]
    return buffers + attributes


@torch.no_grad()
def share_initial_state(ranks: Ranks, sae: Sae, mse_scale: float) -> float:
    """Rank 0's initialised SAE (weights, buffers, act_scale) and mse_scale on every rank; returns the latter.
    With a cache every rank computes the same values anyway; a live stream samples each rank's own text."""
    if not ranks.distributed:
        return mse_scale
    for tensor in [*sae.parameters(), *sae.buffers()]:
        ranks.broadcast_(tensor.data)
    scales = ranks.broadcast_(torch.tensor([sae.act_scale, mse_scale], dtype=torch.float64))
    sae.act_scale = float(scales[0])
    return float(scales[1])


def mean_over_ranks(ranks: Ranks, values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over ranks (every rank passes the same keys, in the same order)."""
    if not ranks.distributed:
        return values
    keys = list(values)
    total = ranks.all_reduce_sum_(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
    return {key: float(v) / ranks.world_size for key, v in zip(keys, total.tolist(), strict=True)}


def world_size_state(ranks: Ranks) -> dict[str, Any]:
    """What a checkpoint records about the job that wrote it."""
    return {"world_size": ranks.world_size}


def check_world_size(ranks: Ranks, state: dict[str, Any], step_dir: Path) -> None:
    """Refuse to resume a checkpoint written by another number of ranks (the data split follows it)."""
    saved = int(state.get("world_size", 1))
    if saved != ranks.world_size:
        how = (
            "plain `saekit train ... --resume`" if saved == 1 else f"`torchrun --nproc-per-node {saved} ...`"
        )
        raise RunDirError(
            f"--resume: {step_dir.name} was written by a job of {saved} rank(s) but this job has "
            f"{ranks.world_size}; resume with {how} (a run keeps its world size: each rank's share of the "
            "data depends on it)"
        )


def require_single_rank(ranks: Ranks, what: str) -> None:
    """A ConfigError for features that do not run under torchrun yet."""
    if ranks.distributed:
        raise ConfigError(
            f"{what} does not run under torchrun yet ({ranks.world_size} ranks); run it as one process, "
            "or train each SAE as its own torchrun job"
        )
