"""Training checkpoints: a directory per step, never a pickle, written atomically.

checkpoints/step_0000100/
    sae/                       the SAE checkpoint (cfg.json + sae.safetensors), loadable on its own
    optimizer.safetensors      Adam moments and step counters, one tensor per (param, field)
    trainer_state.json         step, tokens, counters, RNG state, reader position, scales

save_checkpoint(run_dir / "checkpoints", step, sae, optimizer, state)
step_dir = latest_checkpoint(run_dir / "checkpoints")
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saekit.errors import RunDirError
from saekit.io import atomic_write_json

logger = logging.getLogger(__name__)

STEP_PREFIX = "step_"


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:07d}"


def save_checkpoint(
    root: Path, step: int, sae, optimizer: torch.optim.Optimizer, state: dict[str, Any], keep_last: int = 3
) -> Path:
    """Write a complete checkpoint into a temporary directory, then rename it into place."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    sae.save(tmp / "sae")
    tensors, meta = _flatten_optimizer(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    atomic_write_json(tmp / "trainer_state.json", {**state, "optimizer_meta": meta})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _prune(root, keep_last)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    steps = sorted(p for p in root.iterdir() if p.name.startswith(STEP_PREFIX) and p.is_dir())
    return steps[-1] if steps else None


def load_trainer_state(step_dir: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer moments in place and return the JSON trainer state."""
    state_path, opt_path = step_dir / "trainer_state.json", step_dir / "optimizer.safetensors"
    if not state_path.is_file() or not opt_path.is_file():
        raise RunDirError(
            f"checkpoint {step_dir} is incomplete (missing trainer_state.json or "
            "optimizer.safetensors); delete it to resume from the previous one"
        )
    state = json.loads(state_path.read_text())
    _restore_optimizer(optimizer, load_file(str(opt_path)), state.pop("optimizer_meta"))
    return state


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for param_id, fields in sd["state"].items():
        for name, value in fields.items():
            tensors[f"{param_id}.{name}"] = torch.as_tensor(value).contiguous().clone()
    return tensors, {"param_groups": sd["param_groups"]}


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    _check_moment_shapes(optimizer, state)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _check_moment_shapes(optimizer: torch.optim.Optimizer, state: dict[int, dict[str, torch.Tensor]]) -> None:
    """Adam moments must match their parameters' shapes; a mismatch means the checkpoint was written with
    another parameter layout (e.g. before the encoder was stored latent-major) and cannot be resumed."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for param_id, fields in state.items():
        for name, value in fields.items():
            if value.dim() > 0 and param_id < len(params) and value.shape != params[param_id].shape:
                raise RunDirError(
                    f"optimizer state {name} of parameter {param_id} has shape {tuple(value.shape)} but the "
                    f"parameter is {tuple(params[param_id].shape)}: this checkpoint comes from another "
                    "saekit parameter layout; train from scratch (its sae/ directory still loads with "
                    "Sae.load)"
                )


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.iterdir() if p.name.startswith(STEP_PREFIX) and p.is_dir())
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state().tolist()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
