"""The learning-rate schedule: a pure function of the step number, so resume needs no state of its own.

Step t counts from 1 (the step being taken); T = total_steps, W = warmup_steps, D = decay length:

    warm-up   t <= W:                 f = t / W
    decay     t > T - D (and > W):    p = (t - (T - D)) / D ∈ (0, 1]
              linear: f = 1 - (1 - r)·p        cosine: f = r + (1 - r)·(1 + cos(π·p)) / 2
    otherwise                         f = 1

with r = final_lr_fraction and D = decay_steps or T - W (capped so the decay starts after the warm-up).
Every parameter group's lr is its base lr (the run's lr × the method's per-parameter multiplier) × f, set
before each optimiser step; the logged `lr` is the main group's lr of the window's last step.

The sparsity coefficient of methods that have one (JumpReLU's λ) warms up with the same ramp t / W over the
method's own `sparsity_warmup_steps` (`warmup_factor`); its step counter is part of the objective's
checkpointed state, so both ramps resume exactly.

    schedule = LrSchedule(cfg.schedule, cfg.total_steps)
    schedule.apply(optimizer, base_lrs, step=trainer.step_count + 1)
"""

from __future__ import annotations

import math

import torch

from saekit.config_train import ScheduleConfig


def warmup_factor(step: int, warmup_steps: int) -> float:
    """t / W during a linear warm-up of W steps (t counted from 1), 1 afterwards and when W = 0."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


class LrSchedule:
    """lr multiplier per step (see the module docstring for the formula)."""

    def __init__(self, cfg: ScheduleConfig, total_steps: int) -> None:
        self.cfg, self.total = cfg, total_steps
        length = cfg.decay_steps if cfg.decay_steps is not None else total_steps - cfg.warmup_steps
        self.decay_start = max(total_steps - length, cfg.warmup_steps)

    def factor(self, step: int) -> float:
        cfg = self.cfg
        if step <= cfg.warmup_steps:
            return warmup_factor(step, cfg.warmup_steps)
        if cfg.decay == "constant" or step <= self.decay_start:
            return 1.0
        progress = min(1.0, (step - self.decay_start) / (self.total - self.decay_start))
        r = cfg.final_lr_fraction
        if cfg.decay == "linear":
            return 1.0 - (1.0 - r) * progress
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int) -> float:
        """Set every group's lr for `step`; returns the main group's."""
        f = self.factor(step)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * f
        return optimizer.param_groups[0]["lr"]
