"""SAE checkpoint directory (design.md §3): `sae.safetensors` + `cfg.json`, written atomically.

`sae.safetensors` holds fp32 `W_enc [d_in, d_sae]` (contiguous), `b_enc [d_sae]`, `W_dec [d_sae, d_in]`,
`b_dec [d_in]` and optionally `threshold [d_sae]` — SAELens names and orientation. `cfg.json` holds
format_version, the method name and its section, the full SaeConfig, d_in, d_sae, hookpoint, model_id,
act_scale (inputs are multiplied by it before encoding), saekit_version and a free-form `extra` dict.
Format 1 (flat `sae` with `activation`) is upgraded on load (`upgrade_sae_v1`).

    save_sae(sae, "runs/topk/final")
    sae = load_sae("runs/topk/final", device="cpu")
    export = fold_act_scale(sae)       # act_scale 1, same reconstructions of raw activations
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from saekit.errors import ConfigError, RunDirError
from saekit.io import staged_directory
from saekit.sae.checkpoint_checks import (
    FORMAT_VERSION,
    REQUIRED,
    check_memory,
    check_shapes,
    read_cfg_json,
    read_weights_header,
)
from saekit.sae.model import Sae, make_activation

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"


def _saekit_version() -> str:
    try:
        return importlib.metadata.version("saekit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def save_sae(sae: Sae, path: str | Path) -> Path:
    """Write `sae` to directory `path` (replacing an existing checkpoint there) and return the path.

    Written through `staged_directory`: a crash never leaves a half-written checkpoint under the final
    name, and an older checkpoint there survives until the new one is complete.
    """
    path = Path(path)
    with staged_directory(path) as tmp:
        tensors = {name: getattr(sae, name).detach().float().contiguous().cpu() for name in REQUIRED}
        if sae.threshold is not None:
            tensors["threshold"] = sae.threshold.detach().float().contiguous().cpu()
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "saekit": "sae"})
        (tmp / CONFIG_FILE).write_text(json.dumps(_cfg_json(sae), indent=2) + "\n")
    logger.debug("saved SAE to %s", path)
    return path


def _cfg_json(sae: Sae) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "method": sae.cfg.method,
        "sae": dataclasses.asdict(sae.cfg),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "hookpoint": sae.hookpoint,
        "model_id": sae.model_id,
        "act_scale": sae.act_scale,
        "dtype": "float32",
        "saekit_version": _saekit_version(),
        "extra": sae.extra_cfg,
    }


def load_sae(path: str | Path, device: str | torch.device = "cpu", *, v1_objective: str | None = None) -> Sae:
    """Load a checkpoint directory written by `save_sae`; missing, corrupt, inconsistent or too-large
    checkpoints raise RunDirError before any SAE-sized allocation (`saekit.sae.checkpoint_checks`).

    `v1_objective`: the training objective of a format-1 run (from its config.yaml), which its cfg.json did
    not record; it decides the method of such a checkpoint (see `upgrade_sae_v1`).
    """
    path = Path(path)
    cfg_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (cfg_path, weights_path):
        if not f.is_file():
            raise RunDirError(
                f"no SAE checkpoint at {path}: {f.name} is missing; point at a directory written by "
                "Sae.save (e.g. runs/<name>/final or runs/<name>/checkpoints/step_*)"
            )
    meta = read_cfg_json(cfg_path, v1_objective)
    header = read_weights_header(weights_path)
    check_shapes(meta, header, weights_path)
    check_memory(meta, header, weights_path, device)
    try:
        sae = Sae(
            meta.d_in,
            meta.cfg,
            act_scale=meta.act_scale,
            hookpoint=meta.hookpoint,
            model_id=meta.model_id,
            extra_cfg=meta.extra,
        ).to(device)
    except ConfigError as err:
        raise RunDirError(
            f"{cfg_path} describes an SAE this saekit cannot build ({err}); if it uses a custom method, "
            "import the module that registers it before loading"
        ) from None
    _load_tensors_(sae, weights_path, header, device)
    # Inference mode by default: batch-coupled methods then use their learned thresholds, so a loaded
    # SAE never updates them or makes a token's code depend on its batch-mates. Call .train() to train.
    return sae.eval()


@torch.no_grad()
def _load_tensors_(sae: Sae, source: Path, header: dict, device: str | torch.device) -> None:
    """Copy the tensors in one at a time (peak: the SAE plus one tensor), checking the weights are finite."""
    if "threshold" in header and sae.threshold is None:
        raise RunDirError(
            f"{source}: holds a threshold but method {sae.cfg.method!r} has none; the two files do not "
            "belong together"
        )
    try:
        with safe_open(str(source), framework="pt", device=str(device)) as f:
            for name in (*REQUIRED, "threshold"):
                if name not in header:
                    continue
                tensor = f.get_tensor(name)
                if name in REQUIRED and not torch.isfinite(tensor).all():
                    raise RunDirError(
                        f"{source}: {name} holds NaN/inf (training diverged?); load an earlier checkpoint "
                        "(checkpoints/step_*/sae) or re-train with a lower lr"
                    )
                getattr(sae, name).copy_(tensor)
                del tensor
    except RunDirError:
        raise
    except (SafetensorError, OSError, ValueError) as err:
        raise RunDirError(f"{source} is corrupt or truncated ({err}); re-save or re-train it") from None


@torch.no_grad()
def fold_act_scale(sae: Sae) -> Sae:
    """Copy of `sae` that takes raw activations directly (act_scale = 1) and reconstructs them identically.

    With inputs scaled by c: h(c·x) = c·[(x − b_dec/c) W_enc + b_enc/c], and x̂_raw = (z W_dec + b_dec)/c.
    So dividing b_dec, b_enc and any threshold by c gives pre-activations h/c; selection (TopK and every
    threshold rule) is unchanged by a positive scale, latent values come out divided by c, and the raw
    reconstruction is the same. A rule that is not scale-free adjusts its section (`folded_params`).
    """
    c = sae.act_scale
    folded = copy.deepcopy(sae)
    folded.act_scale = 1.0
    folded.extra_cfg = {**sae.extra_cfg, "folded_act_scale": c}
    folded.b_dec.div_(c)
    folded.b_enc.div_(c)
    if folded.threshold is not None:
        folded.threshold.div_(c)
    params = sae.activation.folded_params(c)
    if params is not sae.cfg.params:
        folded.cfg = dataclasses.replace(sae.cfg, params=params)
        folded.activation = make_activation(folded.cfg)
    return folded
