"""The `saekit compare` and `saekit study` stage configs (kept out of config.py for its size).

cfg = load_config(StudyConfig, "configs/study.yaml", ["seeds=[0,1,2]"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saekit.config_checks import require_path, require_positive
from saekit.config_io import require


@dataclass(frozen=True)
class StudyConfig:
    """What `saekit study` does: a Pareto sweep (every k × every seed) per method on one cache, evaluated on
    held-out text, frontiers interpolated at common L0s, and each paper's claim judged against a baseline."""

    methods: tuple[str, ...] = (
        "configs/topk.yaml",
        "configs/batchtopk.yaml",
        "configs/feature_choice.yaml",
        "configs/matryoshka.yaml",
        "configs/hierarchical_topk.yaml",
    )
    """Train YAMLs, one per method (paths relative to the working directory)."""
    baseline: str = "topk"
    """Stem of the method YAML every claim is judged against (configs/topk.yaml → topk)."""
    ks: tuple[int, ...] = (16, 32, 64)
    """Target mean L0s of the sweep (the key each method declares: k, MP's steps, JumpReLU's target)."""
    seeds: tuple[int, ...] = (0, 1)
    """Training seeds per (method, k); the claims report the spread over them."""
    l0_points: tuple[float, ...] = ()
    """Common L0s where frontiers are interpolated; empty: the ks inside every frontier's L0 range."""
    cache_dir: str = "runs/cache"
    """Activation cache every run trains on (its held-out text is the corpus after the cached part)."""
    hookpoint: str | None = None
    """Hook point of the cache; null picks the only one."""
    expansion_factor: int = 8
    """Same width for every run."""
    total_tokens: int = 500_000
    """Training tokens per run."""
    batch_size: int = 1024
    """Training batch size for every run."""
    dead_tokens: int = 100_000
    """Dead-latent window for every run (short runs need a short one for AuxK to act)."""
    threshold_ema: float | None = None
    """Override the inference-threshold EMA rate of batch-coupled methods (null: each method's own)."""
    eval_sequences: int = 32
    """Held-out sequences per evaluation (spliced CE and held-out FVU/L0)."""
    max_eval_rows: int = 65_536
    """Cached rows per evaluation for the cached FVU, dead and dense fractions."""
    calibrate: Literal["none", "heldout", "cache"] = "none"
    """Re-estimate threshold methods' θ before evaluating (`saekit eval calibrate=`): EMA thresholds of short
    runs lag training; the study compares at achieved L0 either way. The calibrated θ is saved into each run
    (`saekit eval save_calibration=true`). Changing it needs reevaluate=true."""
    train: bool = True
    """Train and evaluate missing runs; false reports only runs already trained and evaluated, e.g. to
    assemble one study.json after several `saekit study` calls on disjoint ks or seeds ran in parallel."""
    reevaluate: bool = False
    """Re-run evaluation of runs whose eval.json is newer than their weights."""
    out_dir: str = "runs/study"
    """One run directory per (method, k, seed) under here, plus study.json."""
    progress: bool = True
    """Progress bars while training."""

    def __post_init__(self) -> None:
        require(len(self.methods) > 0, "methods", "list at least one train YAML, e.g. [configs/topk.yaml]")
        require(len(self.ks) > 0 and all(k > 0 for k in self.ks), "ks", "give values > 0, e.g. [16, 32, 64]")
        require(len(set(self.ks)) == len(self.ks), "ks", f"values must be distinct; got {list(self.ks)}")
        require(len(self.seeds) > 0, "seeds", "give at least one seed, e.g. [0, 1]")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", f"must be distinct; got {list(self.seeds)}")
        require(all(p > 0 for p in self.l0_points), "l0_points", "give L0s > 0, or [] for the ks")
        require_positive(
            self,
            "expansion_factor",
            "total_tokens",
            "batch_size",
            "dead_tokens",
            "eval_sequences",
            "max_eval_rows",
        )
        require_threshold_ema(self.threshold_ema)
        require_path(self.cache_dir, "cache_dir", "runs/cache")
        require_path(self.out_dir, "out_dir", "runs/study")


@dataclass(frozen=True)
class CompareConfig:
    """What `saekit compare` does: train every listed method on one cache at equal mean L0, then evaluate."""

    methods: tuple[str, ...] = ("configs/topk.yaml", "configs/batchtopk.yaml")
    """Train YAMLs, one per method (paths relative to the working directory)."""
    cache_dir: str = "runs/cache"
    """Activation cache every method trains on."""
    hookpoint: str | None = None
    """Hook point of the cache; null picks the only one."""
    k: int = 32
    """Every method trains at this mean L0 (the key its method declares: k, MP's steps, JumpReLU's target)."""
    expansion_factor: int = 8
    """Same width for every method."""
    total_tokens: int = 200_000
    """Training tokens per method."""
    batch_size: int = 1024
    """Training batch size for every method."""
    dead_tokens: int = 100_000
    """Dead-latent window for every method (short runs need a short one for AuxK to act)."""
    eval_sequences: int = 16
    """Held-out sequences per evaluation."""
    threshold_ema: float | None = None
    """Override the inference-threshold EMA rate of batch-coupled methods; short runs need a faster
    rate than the 0.01 default, or threshold-mode L0 at evaluation drifts from k."""
    reevaluate: bool = False
    """Re-run evaluation of runs that already have an eval.json newer than their final/."""
    out_dir: str = "runs/compare"
    """One run directory per method under here, plus compare.json."""
    progress: bool = True
    """Progress bars while training."""

    def __post_init__(self) -> None:
        require(len(self.methods) > 0, "methods", "list at least one train YAML, e.g. [configs/topk.yaml]")
        require_positive(
            self, "k", "expansion_factor", "total_tokens", "batch_size", "dead_tokens", "eval_sequences"
        )
        require_threshold_ema(self.threshold_ema)
        require_path(self.cache_dir, "cache_dir", "runs/cache")
        require_path(self.out_dir, "out_dir", "runs/compare")


def require_threshold_ema(value: float | None) -> None:
    require(
        value is None or 0 < value <= 1,
        "threshold_ema",
        f"must be in (0, 1] (e.g. 0.05), or null for the method's default; got {value}",
    )
