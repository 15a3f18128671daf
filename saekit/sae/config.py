"""`SaeConfig`: the settings every SAE has, plus the chosen method's own section (`params`).

In YAML the method's keys may sit directly under `sae:` (a shorthand) or under `sae.params:`; saved
configs always use `params:`, and a key given directly wins over the same key under `params:` (so
`sae.k=2` on the command line changes a saved config). Which keys exist is up to the method
(`saekit train --help` lists them), so JumpReLU has no `k` and TopK has no threshold settings.

    sae:
      method: batchtopk
      expansion_factor: 8
      k: 32                 # → params.k
    cfg = SaeConfig.make("batchtopk", k=32, expansion_factor=8)
    cfg.params.k, cfg.param("threshold_ema")
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Literal

from saekit.config_io import from_dict, require
from saekit.errors import ConfigError
from saekit.sae.method import get_method

DEFAULT_METHOD = "topk"


# ---------------------------------------------------------------------------------------- shared sections


@dataclass(frozen=True)
class Params:
    """Base of every method section: validation chains through `__post_init__`."""

    def __post_init__(self) -> None:
        pass


@dataclass(frozen=True)
class KParams(Params):
    k: int = 32
    """Active latents per token (the per-token average for batch-coupled methods)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.k > 0, "k", "must be a positive number of active latents")


@dataclass(frozen=True)
class AuxKParams(Params):
    k_aux: int | None = None
    """AuxK latents per token (Gao et al.); null means min(512, d_in // 2); 0 disables AuxK."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK term."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.k_aux is None or self.k_aux >= 0, "k_aux", "must be >= 0 (0 disables AuxK)")
        require(self.aux_coef >= 0, "aux_coef", "must be >= 0")

    def resolve_k_aux(self, d_in: int) -> int:
        return self.k_aux if self.k_aux is not None else min(512, d_in // 2)


@dataclass(frozen=True)
class TopKParams(AuxKParams, KParams):
    """k plus AuxK: the section of TopK and of every method built on a per-row or batch top-k."""


@dataclass(frozen=True)
class ThresholdParams(TopKParams):
    threshold_ema: float = 0.01
    """EMA rate of the learned inference threshold(s) (updated in training mode only)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.threshold_ema <= 1, "threshold_ema", "must be in (0, 1]")


# ---------------------------------------------------------------------------------------- SaeConfig


@dataclass(frozen=True)
class SaeConfig:
    """Architecture of one SAE: the method (from the registry), its section, and the shared settings."""

    method: str = DEFAULT_METHOD
    """SAE method: topk, batchtopk, mutual_choice, feature_choice, aux_zipf, matryoshka, multi_topk,
    hierarchical_topk, msae, gsae, mp, jumprelu (see README)."""
    expansion_factor: int = 8
    """d_sae = expansion_factor * d_in, unless d_sae is given."""
    d_sae: int | None = None
    """Dictionary width; null uses expansion_factor."""
    dead_tokens: int = 10_000_000
    """A latent is dead after this many training tokens without firing (Gao et al.: 10M)."""
    encoder_bf16: bool = False
    """Run the dense encoder GEMM in bf16 (fp32 accumulation, output rounded to bf16, bias added in fp32).
    Weights, the sparse decode, gradients and the optimiser stay fp32. Faster where bf16 GEMMs are native
    (GPUs; CPUs with AVX512-BF16 or AMX); elsewhere it warns once and runs fp32. Selection near ties may
    differ."""
    init_b_dec: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """Decoder bias initialisation from a data sample."""
    normalize_activations: Literal["mean_norm_sqrt_d", "none"] = "mean_norm_sqrt_d"
    """Dataset-wise constant scale so that E||x|| = sqrt(d_in); the factor is stored in cfg.json."""
    init: Literal["tied", "subspace"] = "tied"
    """Decoder init: random rows with encoder = decoder transpose, or rows inside the activations'
    principal subspace (algorithms.md §8)."""
    subspace_variance: float = 0.99
    """Subspace init: keep the top components explaining this fraction of the variance."""
    params: Any = None
    """The method's own section (null: the method's defaults)."""

    def __post_init__(self) -> None:
        method = get_method(self.method)
        if self.params is None:  # filling a default is not a mutation the caller can observe
            object.__setattr__(self, "params", method.params())
        if not isinstance(self.params, method.params):
            raise ConfigError(
                f"params: method {self.method!r} takes {method.params.__name__}, got "
                f"{type(self.params).__name__}; use SaeConfig.make({self.method!r}, ...)"
            )
        require(self.expansion_factor > 0, "expansion_factor", "must be positive")
        require(self.d_sae is None or self.d_sae > 0, "d_sae", "must be positive (or null)")
        require(self.dead_tokens > 0, "dead_tokens", "must be positive")
        require(0 < self.subspace_variance <= 1, "subspace_variance", "must be in (0, 1]")

    @classmethod
    def make(cls, method: str = DEFAULT_METHOD, **keys: Any) -> SaeConfig:
        """Build from flat keyword arguments, shared and method keys mixed (as in YAML)."""
        return from_dict(cls, {"method": method, **keys}, prefix="sae.")

    def replace(self, **keys: Any) -> SaeConfig:
        """A copy with shared and/or method keys changed (flat, as in `make`)."""
        common = {f.name for f in dataclasses.fields(self)} - {"params", "method"}
        params = dataclasses.replace(self.params, **{k: v for k, v in keys.items() if k not in common})
        return dataclasses.replace(self, params=params, **{k: v for k, v in keys.items() if k in common})

    def param(self, name: str, default: Any = None) -> Any:
        """A method key's value, or `default` when this method has no such key."""
        return getattr(self.params, name, default)

    def resolve_d_sae(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in

    # ------------------------------------------------------------------------------- config_io hooks

    @classmethod
    def _normalise_raw(cls, raw: dict[str, Any], prefix: str) -> dict[str, Any]:
        """Move method keys written directly under `sae:` into `params` (the YAML shorthand)."""
        common = {f.name for f in dataclasses.fields(cls)}
        method = raw.get("method", DEFAULT_METHOD)
        if "activation" in raw and "method" not in raw:
            raise ConfigError(
                f"{prefix}activation: since config format 2 the SAE is chosen by {prefix}method (e.g. "
                f"method: {raw['activation']}); objectives such as matryoshka are methods too (README)"
            )
        flat = {k: raw.pop(k) for k in list(raw) if k not in common}
        if flat and isinstance(method, str):
            _check_flat_keys(flat, method, prefix)
        if flat:
            section = raw.get("params") or {}
            if not isinstance(section, dict):
                raise ConfigError(f"{prefix}params must be a mapping of the method's keys, got {section!r}")
            # A key given directly wins over the same key under params: overrides such as `sae.k=2` land
            # flat on top of a saved config (which writes params), and must change it.
            raw["params"] = {**section, **flat}
        return raw

    @classmethod
    def _field_types(cls, raw: dict[str, Any], prefix: str) -> dict[str, Any]:
        name = raw.get("method", DEFAULT_METHOD)
        if not isinstance(name, str):
            raise ConfigError(f"{prefix}method must be a method name, got {name!r}")
        try:
            return {"params": get_method(name).params}
        except ConfigError as err:
            raise ConfigError(f"{prefix}{str(err).removeprefix('sae.')}") from None


def _check_flat_keys(flat: dict[str, Any], method: str, prefix: str) -> None:
    """Name the key and the method when a flat key belongs to no section of this method."""
    try:
        keys = {f.name for f in dataclasses.fields(get_method(method).params)}
    except ConfigError:
        return  # the unknown method is reported by _field_types
    common = {f.name for f in dataclasses.fields(SaeConfig)} - {"params"}
    for key in flat:
        if key not in keys:
            close = difflib.get_close_matches(str(key), sorted(keys | common), n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"its keys: {sorted(keys)}"
            raise ConfigError(f"unknown key '{prefix}{key}' for method {method!r}; {hint}")


# ---------------------------------------------------------------------------------------- format 1


V1_RENAMED = {"fc_tokens_per_latent": "tokens_per_latent"}
"""Method keys renamed since format 1 (old name → new name)."""
V1_OBJECTIVE_METHODS = ("matryoshka", "aux_zipf", "multi_topk", "hierarchical_topk", "msae", "mp")
"""Format-1 objectives that are methods of their own now."""


def upgrade_sae_v1(sae: dict[str, Any], objective: str | None = None) -> dict[str, Any]:
    """A format-1 `sae` mapping (flat, `activation` + the run's `objective`) as a format-2 one.

    Format 1 wrote every key of every method; the ones the chosen method does not read are dropped.
    `objective` is None when only a checkpoint's cfg.json is at hand (it did not record the objective):
    the activation then names the method, which gives the same inference rule.
    """
    sae = dict(sae)
    activation = sae.pop("activation", DEFAULT_METHOD)
    if objective in V1_OBJECTIVE_METHODS:
        method = objective
    else:
        method = {"topk_softcap": "msae"}.get(activation, activation)
    if method == "mp":
        sae["steps"] = sae.pop("mp_steps", None) or sae.get("k", 32)
    for old, new in V1_RENAMED.items():
        if old in sae:
            sae[new] = sae.pop(old)
    if method in ("matryoshka", "aux_zipf"):
        sae["activation"] = activation
    common = {f.name for f in dataclasses.fields(SaeConfig)}
    keys = {f.name for f in dataclasses.fields(get_method(method).params)}
    out: dict[str, Any] = {k: v for k, v in sae.items() if k in common}
    out.update(method=method, params={k: v for k, v in sae.items() if k in keys})
    return out
