"""The neutral form every foreign SAE is read into and written from, and the checks all readers share.

`ForeignSae` is the inference rule of an SAE in SAELens orientation with nothing left implicit: the decoder
bias is always subtracted from the input (a format that does not do so has it folded into `b_enc`), any
per-latent rescaling is folded into the weights, and `act_scale` is the one input scale still to apply
(1.0 once folded). Readers produce it from files, writers turn it into files; neither knows `Sae`.

    foreign = check_foreign(ForeignSae("saelens", "topk", W_enc, b_enc, W_dec, b_dec, k=32), "where")
    raw_ready = fold_scale(foreign)     # act_scale folded into the weights (SAELens's fold)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from saekit.errors import SaekitError

Rule = Literal["topk", "jumprelu", "relu"]
FORMATS = ("saelens", "sparsify", "dictionary_learning")


class FormatError(SaekitError, ValueError):
    """A foreign SAE directory that cannot be read, or an SAE that a format cannot represent."""


@dataclass
class ForeignSae:
    """z = rule((x·act_scale − b_dec) W_enc + b_enc), x̂ = (z W_dec + b_dec) / act_scale."""

    format: str
    """Where it came from or goes to: one of FORMATS."""
    rule: Rule
    """topk (k largest, ReLU), jumprelu (h > threshold, ReLU) or relu (plain ReLU)."""
    W_enc: Float[Tensor, "d_in d_sae"]
    b_enc: Float[Tensor, " d_sae"]
    W_dec: Float[Tensor, "d_sae d_in"]
    b_dec: Float[Tensor, " d_in"]
    k: int | None = None
    threshold: Float[Tensor, " d_sae"] | None = None
    act_scale: float = 1.0
    """Inputs are multiplied by this before encoding (a training-form save whose scale is not folded)."""
    hookpoint: str = ""
    """TransformerLens hook name (saekit's), empty when the source does not say."""
    model_name: str = ""
    """The model the SAE was trained on, as the source names it; empty when it does not say."""
    details: dict[str, Any] = field(default_factory=dict)
    """Training settings and provenance worth keeping (training architecture, k, saekit's own config)."""

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])


def check_foreign(sae: ForeignSae, source: str) -> ForeignSae:
    """Shapes agree, every tensor is finite, the rule has what it needs; FormatError naming `source`."""
    d_in, d_sae = sae.d_in, sae.d_sae
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if sae.threshold is not None:
        want["threshold"] = (d_sae,)
    for name, shape in want.items():
        tensor = getattr(sae, name)
        if tuple(tensor.shape) != shape:
            raise FormatError(
                f"{source}: {name} has shape {tuple(tensor.shape)} but the other tensors imply {shape} "
                f"(d_in={d_in}, d_sae={d_sae}); the files do not belong together"
            )
        if not torch.isfinite(tensor).all():
            raise FormatError(f"{source}: {name} holds NaN/inf; the SAE is damaged (diverged training?)")
    if sae.rule == "topk" and not (isinstance(sae.k, int) and 0 < sae.k <= d_sae):
        raise FormatError(f"{source}: a TopK SAE needs 0 < k <= d_sae={d_sae}, got k={sae.k!r}")
    if sae.rule == "jumprelu" and sae.threshold is None:
        raise FormatError(f"{source}: a JumpReLU SAE needs a threshold tensor; none was found")
    if not (math.isfinite(sae.act_scale) and sae.act_scale > 0):
        raise FormatError(f"{source}: the activation scale must be a finite number > 0, got {sae.act_scale}")
    return sae


def fold_scale(sae: ForeignSae) -> ForeignSae:
    """The same SAE taking raw activations (act_scale 1), SAELens's fold: W_enc·c, W_dec/c, b_dec/c.

    h((c·x − b_dec) W_enc) = (x − b_dec/c)(c·W_enc), so pre-activations, selections and latent values are
    unchanged, and x̂ = (z W_dec + b_dec)/c = z (W_dec/c) + b_dec/c.
    """
    c = sae.act_scale
    if c == 1.0:
        return sae
    return ForeignSae(
        sae.format,
        sae.rule,
        sae.W_enc * c,
        sae.b_enc.clone(),
        sae.W_dec / c,
        sae.b_dec / c,
        sae.k,
        None if sae.threshold is None else sae.threshold.clone(),
        1.0,
        sae.hookpoint,
        sae.model_name,
        {**sae.details, "folded_act_scale": c},
    )


def as_float32(tensors: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """fp32 copies of floating tensors; a non-float weight is a damaged or foreign file."""
    out = {}
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise FormatError(f"{source}: {name} has dtype {tensor.dtype}, expected floating point weights")
        out[name] = tensor.detach().to(torch.float32).contiguous()
    return out


def json_beside(path: Path, cfg_file: str, weights_file: str | None = None) -> dict[str, Any] | None:
    """The JSON object in `path/cfg_file` (with `path/weights_file` beside it, when named), or None when
    either is missing or the config is unreadable or not an object: how each format recognises its dirs."""
    if weights_file is not None and not (path / weights_file).is_file():
        return None
    try:
        raw = json.loads((path / cfg_file).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None
