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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit.config_io import from_dict
from saekit.errors import ConfigError, RunDirError
from saekit.io import staged_directory
from saekit.sae.config import SaeConfig, upgrade_sae_v1
from saekit.sae.model import Sae, make_activation

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"
_REQUIRED = ("W_enc", "b_enc", "W_dec", "b_dec")


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
        tensors = {name: getattr(sae, name).detach().float().contiguous().cpu() for name in _REQUIRED}
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
    """Load a checkpoint directory written by `save_sae`; missing or corrupt files raise RunDirError.

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
    meta = _read_cfg_json(cfg_path, v1_objective)
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunDirError(f"{weights_path} is corrupt or truncated ({err}); re-save or re-train it") from None
    try:
        sae = Sae(
            meta["d_in"],
            meta["cfg"],
            act_scale=meta["act_scale"],
            hookpoint=meta["hookpoint"],
            model_id=meta["model_id"],
            extra_cfg=meta["extra"],
        ).to(device)
    except ConfigError as err:
        raise RunDirError(
            f"{cfg_path} describes an SAE this saekit cannot build ({err}); if it uses a custom method, "
            "import the module that registers it before loading"
        ) from None
    _load_tensors_(sae, tensors, weights_path)
    # Inference mode by default: batch-coupled methods then use their learned thresholds, so a loaded
    # SAE never updates them or makes a token's code depend on its batch-mates. Call .train() to train.
    return sae.eval()


def _read_cfg_json(cfg_path: Path, v1_objective: str | None = None) -> dict[str, Any]:
    try:
        raw = json.loads(cfg_path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("top level is not an object")
    except (OSError, ValueError) as err:
        raise RunDirError(f"{cfg_path} is not valid JSON ({err}); re-save the checkpoint") from None
    version = raw.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RunDirError(
            f"{cfg_path} has format_version {version!r}, newer than this saekit understands "
            f"({FORMAT_VERSION}); upgrade saekit to load it"
        )
    if "d_in" not in raw or "sae" not in raw:
        raise RunDirError(f"{cfg_path} lacks 'd_in' or 'sae'; it was not written by Sae.save")
    try:
        sae_raw = raw["sae"] if version >= 2 else upgrade_sae_v1(raw["sae"], v1_objective)
        cfg = from_dict(SaeConfig, sae_raw, prefix="sae.")
    except ConfigError as err:
        custom = "unknown method" in str(err)
        hint = "; if it uses a custom method, import the module that registers it first" if custom else ""
        raise RunDirError(f"{cfg_path}: invalid SAE config ({err}){hint}") from None
    # Keys patched explicitly when absent, so files that lack them stay loadable.
    return {
        "d_in": int(raw["d_in"]),
        "cfg": cfg,
        "act_scale": float(raw.get("act_scale", 1.0)),
        "hookpoint": raw.get("hookpoint", ""),
        "model_id": raw.get("model_id", ""),
        "extra": raw.get("extra") or {},
    }


@torch.no_grad()
def _load_tensors_(sae: Sae, tensors: dict[str, torch.Tensor], source: Path) -> None:
    missing = [name for name in _REQUIRED if name not in tensors]
    if missing:
        raise RunDirError(f"{source} lacks tensors {missing}; it was not written by Sae.save")
    for name in _REQUIRED:
        param = getattr(sae, name)
        if tensors[name].shape != param.shape:
            raise RunDirError(
                f"{source}: {name} has shape {tuple(tensors[name].shape)} but cfg.json implies "
                f"{tuple(param.shape)}; the two files do not belong together"
            )
        param.copy_(tensors[name])
    if "threshold" in tensors:
        if sae.threshold is None or tensors["threshold"].shape != (sae.d_sae,):
            raise RunDirError(
                f"{source}: threshold of shape {tuple(tensors['threshold'].shape)} does not fit method "
                f"{sae.cfg.method!r} with d_sae={sae.d_sae}; the two files do not belong together"
            )
        sae.threshold.copy_(tensors["threshold"])


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
