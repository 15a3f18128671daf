"""`Sae` ⇄ `ForeignSae`: which saekit methods another tool can represent, and building a `Sae` from a
foreign directory's rule (what `Sae.load` does with SAELens / sparsify / dictionary_learning directories).

Export maps each method's *inference* rule, never its training loss: per-row TopK methods (topk,
multi_topk, hierarchical_topk, Matryoshka/aux_zipf with a topk rule, g-SAE's label-free selection) → topk;
learned thresholds (batchtopk, mutual_choice, feature_choice, jumprelu, and Matryoshka/aux_zipf with those
rules) → jumprelu with per-latent thresholds; a batch method whose threshold was never learned runs per-row
TopK(k), and is exported as that. MSAE (soft-capped values) and MP (an iterative encoder) have no
counterpart and are refused. The activation scale is folded exactly once (`fold_scale`).

    foreign = foreign_from_sae(sae, "saelens")      # FormatError naming what cannot be represented
    sae = sae_from_foreign(read_foreign(path))      # eval mode, act_scale as the source had it
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from saekit.config_io import from_dict
from saekit.errors import ConfigError
from saekit.formats import (
    FORMATS,
    ForeignSae,
    FormatError,
    detect_format,
    fold_scale,
    read_foreign,
    sae_choices,
)
from saekit.sae.config import SaeConfig
from saekit.sae.methods.batchtopk import ThresholdInference, threshold_is_learned
from saekit.sae.methods.gsae import GradientTopK
from saekit.sae.methods.jumprelu import JumpRelu
from saekit.sae.methods.mp import MatchingPursuit
from saekit.sae.methods.multik import TopKSoftCap
from saekit.sae.methods.topk import TopK
from saekit.sae.model import Sae

logger = logging.getLogger(__name__)


def inference_rule(sae: Sae) -> tuple[str, int | None, torch.Tensor | None]:
    """(rule, k, threshold) that computes `sae`'s inference code; FormatError when no format has it."""
    act = sae.activation
    if isinstance(act, TopKSoftCap):
        raise FormatError(
            f"method {sae.cfg.method!r} caps latent values (30·tanh(z/30)); no target format has that "
            "activation, so exporting it would change every reconstruction"
        )
    if isinstance(act, MatchingPursuit):
        raise FormatError(
            f"method {sae.cfg.method!r} encodes by matching pursuit over the decoder; the target formats "
            "only have a linear encoder followed by TopK/threshold selection"
        )
    if isinstance(act, GradientTopK):
        if act.beta != 0.0:
            logger.warning(
                "g-SAE: exporting its label-free selection (plain TopK, k=%d); gradient-weighted selection "
                "needs dL/dx, which no target format passes to an SAE",
                act.k,
            )
        return "topk", act.k, None
    if isinstance(act, ThresholdInference):
        if threshold_is_learned(sae):
            return "jumprelu", act.k, sae.threshold.detach().clone()
        return "topk", act.k, None  # what inference runs until a threshold is learned
    if isinstance(act, JumpRelu):
        return "jumprelu", None, sae.threshold.detach().clone()
    if isinstance(act, TopK):
        return "topk", act.k, None
    raise FormatError(
        f"method {sae.cfg.method!r} ({type(act).__name__}) has no known counterpart in other formats; "
        "saekit exports TopK and threshold inference rules only"
    )


@torch.no_grad()
def foreign_from_sae(sae: Sae, fmt: str, *, model_name: str | None = None) -> ForeignSae:
    """`sae` as a `ForeignSae` for format `fmt`, activation scale folded; FormatError if not representable."""
    rule, k, threshold = inference_rule(sae)
    if fmt == "sparsify" and rule != "topk":
        raise FormatError(
            f"sparsify SAEs are TopK only, but method {sae.cfg.method!r} runs per-latent thresholds at "
            "inference; export it to saelens or dictionary_learning instead"
        )
    details: dict[str, Any] = {
        "training_architecture": sae.cfg.method,
        "training_architecture_details": {"k": k} if k is not None else {},
        "saekit": {
            "sae": dataclasses.asdict(sae.cfg),
            "model_id": sae.model_id,
            "act_scale": sae.act_scale,
        },
    }
    foreign = ForeignSae(
        fmt,
        rule,
        sae.W_enc.detach().float().clone(),
        sae.b_enc.detach().float().clone(),
        sae.W_dec.detach().float().clone(),
        sae.b_dec.detach().float().clone(),
        k=k,
        threshold=None if threshold is None else threshold.float(),
        act_scale=sae.act_scale,
        hookpoint=sae.hookpoint,
        model_name=model_name if model_name is not None else sae.model_id,
        details=details,
    )
    return fold_scale(foreign)


@torch.no_grad()
def sae_from_foreign(foreign: ForeignSae, device: str | torch.device = "cpu") -> Sae:
    """A saekit `Sae` computing `foreign`'s rule, in eval mode: the saekit method it was exported from when
    its metadata says so and the rules agree, else topk (TopK) or jumprelu (thresholds; ReLU = θ 0)."""
    sae = _restored(foreign) or _generic(foreign)
    sae.W_enc.copy_(foreign.W_enc)
    sae.b_enc.copy_(foreign.b_enc)
    sae.W_dec.copy_(foreign.W_dec)
    sae.b_dec.copy_(foreign.b_dec)
    if sae.threshold is not None:
        sae.threshold.copy_(foreign.threshold if foreign.threshold is not None else torch.zeros(sae.d_sae))
    return sae.to(device).eval()


def _generic(foreign: ForeignSae) -> Sae:
    common = {
        "d_sae": foreign.d_sae,
        "normalize_activations": "none" if foreign.act_scale == 1.0 else "mean_norm_sqrt_d",
    }
    if foreign.rule == "topk":
        cfg = SaeConfig.make("topk", k=foreign.k, **common)
    else:
        l0 = foreign.details.get("l0")
        target = float(l0) if isinstance(l0, int | float) and l0 > 0 else float(foreign.k or 32)
        cfg = SaeConfig.make("jumprelu", target_l0=target, **common)
    return Sae(foreign.d_in, cfg, **_identity(foreign))


def _restored(foreign: ForeignSae) -> Sae | None:
    """The saekit method recorded by a saekit export, if it still computes the same rule."""
    saved = foreign.details.get("saekit")
    if not isinstance(saved, dict) or not isinstance(saved.get("sae"), dict):
        return None
    try:
        cfg = from_dict(SaeConfig, dict(saved["sae"]), prefix="sae.")
        if cfg.resolve_d_sae(foreign.d_in) != foreign.d_sae:
            return None
        sae = Sae(foreign.d_in, cfg, **_identity(foreign))
    except (ConfigError, TypeError, ValueError, KeyError):
        return None
    if foreign.threshold is not None and sae.threshold is not None:
        sae.threshold.data.copy_(foreign.threshold)  # the rule depends on whether θ was learned
    try:
        rule, k, _ = inference_rule(sae)
    except FormatError:
        return None
    return (
        sae
        if (rule, k if rule == "topk" else None) == (foreign.rule, foreign.k if rule == "topk" else None)
        else None
    )


def _identity(foreign: ForeignSae) -> dict[str, Any]:
    saved = foreign.details.get("saekit") if isinstance(foreign.details.get("saekit"), dict) else {}
    model_id = saved.get("model_id") if isinstance(saved.get("model_id"), str) else ""
    extra = {
        "imported": {"format": foreign.format, **{k: v for k, v in foreign.details.items() if k != "saekit"}}
    }
    return {
        "act_scale": foreign.act_scale,
        "hookpoint": foreign.hookpoint,
        "model_id": model_id or foreign.model_name,
        "extra_cfg": extra,
    }


def is_foreign_dir(path: Path) -> bool:
    """A directory `Sae.load` should convert: one foreign SAE, or several with no saekit checkpoint."""
    fmt = detect_format(path)
    return fmt in FORMATS or (fmt is None and bool(sae_choices(path)))


def load_foreign(
    path: str | Path, device: str | torch.device = "cpu", *, fmt: str = "auto", select: str | None = None
) -> Sae:
    """Open another tool's SAE directory as a `Sae` (what `Sae.load` does for non-saekit directories)."""
    return sae_from_foreign(read_foreign(path, fmt, select), device)
