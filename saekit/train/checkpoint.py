"""Training checkpoints: a directory per step, never a pickle, written crash-safe (staged).

checkpoints/step_0000100/
    sae/                       the SAE checkpoint (cfg.json + sae.safetensors), loadable on its own
    optimizer.safetensors      Adam moments and step counters, one tensor per (param, field)
    trainer_state.json         step, tokens, counters, RNG state, reader position, scales

save_checkpoint(RunDir(run_dir), step, sae, optimizer, state)     # paths: saekit.rundir
state = load_trainer_state(RunDir(run_dir).latest_checkpoint(), optimizer)
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saekit.errors import RunDirError
from saekit.io import atomic_write_json, staged_directory
from saekit.rundir import OPTIMIZER_FILE, SAE_SUBDIR, TRAINER_STATE_FILE, RunDir

logger = logging.getLogger(__name__)


def save_checkpoint(
    run: RunDir, step: int, sae, optimizer: torch.optim.Optimizer, state: dict[str, Any], keep_last: int = 3
) -> Path:
    """Write a complete checkpoint of `step` (staged, crash-safe) and keep only the newest `keep_last`."""
    target = run.step_dir(step)
    with staged_directory(target) as tmp:
        sae.save(tmp / SAE_SUBDIR)
        tensors, meta = _flatten_optimizer(optimizer)
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        atomic_write_json(tmp / TRAINER_STATE_FILE, {**state, "optimizer_meta": meta})
    for old in run.checkpoints()[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def save_final(run: RunDir, sae, state: dict[str, Any]) -> Path:
    """Write the finished SAE and the counters readers need to `final/` (staged, crash-safe)."""
    with staged_directory(run.final_dir) as tmp:
        sae.save(tmp)
        atomic_write_json(tmp / TRAINER_STATE_FILE, state)
    return run.final_dir


def load_trainer_state(step_dir: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer moments in place and return the JSON trainer state."""
    state_path, opt_path = step_dir / TRAINER_STATE_FILE, step_dir / OPTIMIZER_FILE
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


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state().tolist()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
