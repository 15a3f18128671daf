"""The optional sections of `TrainConfig`: learning-rate schedule, tracking, and many SAEs from one stream.

They live beside `saekit.config` (same layer) so `TrainConfig` stays one screen. Every default leaves a
plain single-SAE run exactly as before (constant lr, metrics.jsonl only, one SAE), so format-1/2 configs
and the checkpoints of older runs load and resume unchanged.

    schedule: {warmup_steps: 100, decay: cosine, final_lr_fraction: 0.1}
    log: {wandb: true, wandb_mode: offline, tensorboard: true}
    saes:                                  # several SAEs, one stream; each gets <run_dir>/<name>/
      - {name: l0-topk, hookpoint: blocks.0.hook_resid_post, sae: {method: topk, k: 16}}
      - {name: l1-batchtopk, hookpoint: blocks.1.hook_resid_post, sae: {method: batchtopk, k: 16}}
    sweep: {hookpoints: [blocks.0.hook_resid_post, blocks.1.hook_resid_post], k: [16, 32]}
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Literal

from saekit.config_io import from_dict, require, to_dict
from saekit.sae.config import SaeConfig
from saekit.sae.method import get_method


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning rate over the run: linear warm-up, then constant or a decay to a fraction of `lr`."""

    warmup_steps: int = 0
    """Linear warm-up: step t (1-based) of the first warmup_steps uses lr·t/warmup_steps (0: none)."""
    decay: Literal["constant", "linear", "cosine"] = "constant"
    """After the warm-up: keep lr (constant), or fall linearly / along a half cosine to final_lr_fraction·lr
    at the last step."""
    decay_steps: int | None = None
    """Length of the decay, ending at the last step; null: every step after the warm-up."""
    final_lr_fraction: float = 0.1
    """lr at the last step as a fraction of lr (decay: linear or cosine only)."""

    def __post_init__(self) -> None:
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(
            self.decay_steps is None or self.decay_steps > 0,
            "decay_steps",
            f"must be > 0, or null for every step after the warm-up; got {self.decay_steps}",
        )
        require(
            0 <= self.final_lr_fraction <= 1,
            "final_lr_fraction",
            f"must be in [0, 1] (e.g. 0.1); got {self.final_lr_fraction}",
        )


@dataclass(frozen=True)
class LogConfig:
    """Where metrics go besides metrics.jsonl (always written). Both trackers are optional packages."""

    wandb: bool = False
    """Also log to Weights & Biases (needs `pip install wandb`, or `pip install 'saekit[tracking]'`)."""
    wandb_project: str = "saekit"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (team or user); null: your default."""
    wandb_mode: Literal["online", "offline"] = "online"
    """offline writes the run under <run_dir>/wandb/ for a later `wandb sync`, with no network."""
    tensorboard: bool = False
    """Also write TensorBoard events to <run_dir>/tensorboard/ (needs `pip install tensorboard`)."""


@dataclass(frozen=True)
class SaeMember:
    """One SAE of a multi-SAE run: trained on every batch of the shared stream, in <run_dir>/<name>/."""

    name: str = ""
    """Its run directory under run_dir (a plain name: letters, digits, . _ -)."""
    sae: SaeConfig = field(default_factory=SaeConfig)
    """The SAE (as the top-level `sae:` section)."""
    hookpoint: str | None = None
    """Hook point it trains on; null: the run's hookpoint."""
    lr: float | None = None
    """Its learning rate; null: the run's lr (or the 1/sqrt(d_sae) rule when that is null too)."""

    def __post_init__(self) -> None:
        require(
            bool(_NAME.fullmatch(self.name)) and self.name not in (".", ".."),
            "name",
            f"give each SAE a plain directory name (letters, digits, '.', '_', '-'), got {self.name!r}",
        )
        require(
            self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "lr", f"must be > 0, got {self.lr}"
        )


_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SweepConfig:
    """A grid of SAEs around the run's `sae:` section; an empty list keeps the run's value of that key."""

    hookpoints: tuple[str, ...] = ()
    """Hook points (empty: the run's hookpoint)."""
    methods: tuple[str, ...] = ()
    """Methods (empty: sae.method); a method other than sae.method starts from its own defaults."""
    expansion_factor: tuple[int, ...] = ()
    """Widths as multiples of d_in (empty: sae.expansion_factor)."""
    k: tuple[int, ...] = ()
    """Mean L0 values, set on each method's L0 key (k, MP's steps, JumpReLU's target_l0)."""

    def __post_init__(self) -> None:
        require(
            any((self.hookpoints, self.methods, self.expansion_factor, self.k)),
            "sweep",
            "list at least one of hookpoints, methods, expansion_factor, k (or drop the sweep section)",
        )
        for method in self.methods:
            get_method(method)  # an unknown method fails here, with close matches
        require(all(e > 0 for e in self.expansion_factor), "expansion_factor", "values must be > 0")
        require(all(k > 0 for k in self.k), "k", "values must be > 0")


def sweep_members(sweep: SweepConfig, sae: SaeConfig, hookpoint: str | None) -> tuple[SaeMember, ...]:
    """The grid as members, named by the swept values (e.g. `blocks.1.hook_resid_post-topk-x8-k16`)."""
    axes = {
        "hookpoint": sweep.hookpoints or (hookpoint,),
        "method": sweep.methods or (sae.method,),
        "expansion_factor": sweep.expansion_factor or (sae.expansion_factor,),
        "k": sweep.k or (None,),
    }
    members = []
    for hook, method, width, k in itertools.product(*axes.values()):
        raw = to_dict(sae)
        if method != sae.method:
            raw = {key: value for key, value in raw.items() if key != "params"}
        raw.update(method=method, expansion_factor=width)
        l0_key = get_method(method).l0_param
        if k is not None and l0_key is not None:
            raw[l0_key] = k
        parts = [
            str(hook) if sweep.hookpoints else None,
            method if sweep.methods else None,
            f"x{width}" if sweep.expansion_factor else None,
            f"k{k}" if sweep.k else None,
        ]
        name = "-".join(p for p in parts if p)
        members.append(SaeMember(name=name, sae=from_dict(SaeConfig, raw, prefix="sweep."), hookpoint=hook))
    return tuple(members)


def check_members(members: tuple[SaeMember, ...]) -> None:
    names = [m.name for m in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    require(not repeated, "saes", f"every SAE needs its own name; repeated: {repeated}")
