"""SAE checkpoint directory (design.md §3): `sae.safetensors` + `cfg.json`, written atomically.

`sae.safetensors` holds fp32 `W_enc [d_in, d_sae]` (contiguous), `b_enc [d_sae]`, `W_dec [d_sae, d_in]`,
`b_dec [d_in]` and optionally `threshold [d_sae]` — SAELens names and orientation. `cfg.json` holds
format_version, activation name + params, the full SaeConfig, d_in, d_sae, hookpoint, model_id, act_scale
(inputs are multiplied by it before encoding), saekit_version and a free-form `extra` dict.

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
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit.config import SaeConfig, from_dict
from saekit.errors import ConfigError, RunDirError
from saekit.sae.activations import get_activation
from saekit.sae.model import Sae

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"
_REQUIRED = ("W_enc", "b_enc", "W_dec", "b_dec")


def _saekit_version() -> str:
    try:
        return importlib.metadata.version("saekit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def save_sae(sae: Sae, path: str | Path) -> Path:
    """Write `sae` to directory `path` (replacing an existing checkpoint there) and return the path.

    Files are written into a hidden sibling directory that is renamed into place once complete, so a
    crash never leaves a half-written checkpoint under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = {name: getattr(sae, name).detach().float().contiguous().cpu() for name in _REQUIRED}
        if sae.threshold is not None:
            tensors["threshold"] = sae.threshold.detach().float().contiguous().cpu()
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "saekit": "sae"})
        (tmp / CONFIG_FILE).write_text(json.dumps(_cfg_json(sae), indent=2) + "\n")
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            _fsync(tmp / name)
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("saved SAE to %s", path)
    return path


def _replace_dir(src: Path, dst: Path) -> None:
    # A non-empty directory cannot be replaced in one rename: move the old one aside first, and only
    # delete it once the new one is in place.
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def _cfg_json(sae: Sae) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "activation": sae.cfg.activation,
        "activation_params": sae.activation.params(),
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


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> Sae:
    """Load a checkpoint directory written by `save_sae`; missing or corrupt files raise RunDirError."""
    path = Path(path)
    cfg_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (cfg_path, weights_path):
        if not f.is_file():
            raise RunDirError(
                f"no SAE checkpoint at {path}: {f.name} is missing; point at a directory written by "
                "Sae.save (e.g. runs/<name>/final or runs/<name>/checkpoints/step_*)"
            )
    meta = _read_cfg_json(cfg_path)
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
            f"{cfg_path} describes an SAE this saekit cannot build ({err}); if it uses a custom activation, "
            "import the module that registers it before loading"
        ) from None
    _load_tensors_(sae, tensors, weights_path)
    # Inference mode by default: batch-coupled methods then use their learned thresholds, so a loaded
    # SAE never updates them or makes a token's code depend on its batch-mates. Call .train() to train.
    return sae.eval()


def _read_cfg_json(cfg_path: Path) -> dict[str, Any]:
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
        cfg = from_dict(SaeConfig, raw["sae"], prefix="sae.")
    except ConfigError as err:
        raise RunDirError(f"{cfg_path}: invalid SAE config ({err})") from None
    # Keys patched explicitly when absent, so version-1 files stay loadable if these become optional.
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
        if tensors["threshold"].shape != (sae.d_sae,):
            raise RunDirError(
                f"{source}: threshold must have shape ({sae.d_sae},), got {tuple(tensors['threshold'].shape)}"
            )
        sae.threshold = tensors["threshold"].float().to(sae.W_dec.device)


@torch.no_grad()
def fold_act_scale(sae: Sae) -> Sae:
    """Copy of `sae` that takes raw activations directly (act_scale = 1) and reconstructs them identically.

    With inputs scaled by c: h(c·x) = c·[(x − b_dec/c) W_enc + b_enc/c], and x̂_raw = (z W_dec + b_dec)/c.
    So dividing b_dec, b_enc and any threshold by c gives pre-activations h/c; selection (TopK and every
    threshold rule) is unchanged by a positive scale, latent values come out divided by c, and the raw
    reconstruction is the same.
    """
    c = sae.act_scale
    folded = copy.deepcopy(sae)
    folded.act_scale = 1.0
    folded.extra_cfg = {**sae.extra_cfg, "folded_act_scale": c}
    folded.b_dec.div_(c)
    folded.b_enc.div_(c)
    if folded.threshold is not None:
        folded.threshold.div_(c)
    if sae.cfg.grad_beta and sae.cfg.activation == "gsae":
        # g-SAE scores h·(1 + β|g W_decᵀ|) with g in the scaled space (g/c): keep the ranking for raw g.
        folded.cfg = dataclasses.replace(sae.cfg, grad_beta=sae.cfg.grad_beta / c)
        folded.activation = get_activation(folded.cfg.activation, folded.cfg)
    return folded
