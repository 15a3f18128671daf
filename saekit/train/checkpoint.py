"""Training checkpoints: a directory per step, never a pickle, written crash-safe (staged).

checkpoints/step_0000100/
    sae/                       the SAE checkpoint (cfg.json + sae.safetensors), loadable on its own
    optimizer.safetensors      Adam moments and step counters, one tensor per (param, field)
    trainer_state.json         step, tokens, counters, RNG state, reader position, scales

save_checkpoint(RunDir(run_dir), step, sae, optimizer, state)     # paths: saekit.rundir
state = read_trainer_state(step_dir)        # validated JSON, read-only; corrupt files raise RunDirError
state = load_trainer_state(RunDir(run_dir).latest_checkpoint(), optimizer)

A failed write (disk full, read-only file system) raises RunDirError and leaves the previous checkpoint and
final/ as they were.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from saekit.errors import RunDirError, SaekitError
from saekit.io import atomic_write_json, staged_directory
from saekit.rundir import OLD_MARK, OPTIMIZER_FILE, SAE_SUBDIR, TRAINER_STATE_FILE, RunDir

logger = logging.getLogger(__name__)


def save_checkpoint(
    run: RunDir, step: int, sae, optimizer: torch.optim.Optimizer, state: dict[str, Any], keep_last: int = 3
) -> Path:
    """Write a complete checkpoint of `step` (staged, crash-safe) and keep only the newest `keep_last`."""
    target = run.step_dir(step)
    with write_errors(target, run), staged_directory(target) as tmp:
        sae.save(tmp / SAE_SUBDIR)
        tensors, meta = _flatten_optimizer(optimizer)
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        atomic_write_json(tmp / TRAINER_STATE_FILE, {**state, "optimizer_meta": meta})
    for old in run.checkpoints()[:-keep_last]:
        _remove_checkpoint(old)
    return target


def save_final(run: RunDir, sae, state: dict[str, Any]) -> Path:
    """Write the finished SAE and the counters readers need to `final/` (staged, crash-safe)."""
    with write_errors(run.final_dir, run), staged_directory(run.final_dir) as tmp:
        sae.save(tmp)
        atomic_write_json(tmp / TRAINER_STATE_FILE, state)
    return run.final_dir


def recovery(run: RunDir) -> str:
    """What survives a failed write in `run` and how to go on (the tail of `write_errors`' message)."""
    latest = run.latest_checkpoint()
    if latest is None:  # a start that fails before its first checkpoint removes what it wrote
        return "no checkpoint was written yet, so the run was removed; fix that and start it again"
    return f"the newest checkpoint {latest.name} is intact; fix that and re-run with --resume"


@contextlib.contextmanager
def write_errors(target: Path, run: RunDir) -> Iterator[None]:
    """OSError (disk full, quota, read-only file system) while writing `target` of `run` → one-line
    RunDirError saying what survives. The staged write has already been rolled back when this sees it."""
    try:
        yield
    except SaekitError:  # already one line with its fix (RunDirError, ResourceError are OSErrors too)
        raise
    except OSError as err:
        reason = err.strerror or str(err)
        raise RunDirError(
            f"could not write {target}: {reason} (free disk space or fix permissions); {recovery(run)}"
        ) from None


def _remove_checkpoint(step_dir: Path) -> None:
    """Rename aside first, then delete: a kill mid-delete leaves a dot-named leftover (cleaned on the next
    start), never a half-deleted directory that still looks like a checkpoint."""
    aside = step_dir.with_name(f".{step_dir.name}{OLD_MARK}{os.getpid()}")
    try:
        os.replace(step_dir, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def load_trainer_state(step_dir: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer moments in place and return the JSON trainer state (validated)."""
    state = read_trainer_state(step_dir)
    opt_path = step_dir / OPTIMIZER_FILE
    try:
        tensors = load_file(str(opt_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise corrupt_checkpoint(step_dir, OPTIMIZER_FILE, f"unreadable: {err}") from None
    try:
        _restore_optimizer(optimizer, tensors, state.pop("optimizer_meta"))
    except (KeyError, TypeError, ValueError) as err:
        problem = f"does not fit this SAE's optimizer ({err})"
        raise corrupt_checkpoint(step_dir, OPTIMIZER_FILE, problem) from None
    return state


_STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int,
    "tokens": int,
    "mse_scale": (int, float),
    "rng": dict,
    "reader": dict,
    "dead_tracker": dict,
    "optimizer_meta": dict,
}


def read_trainer_state(step_dir: Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json, checked for the fields and types resume needs; its optimizer
    file's header is checked too (a truncated file fails here). Reads only: safe before taking the lock."""
    state_path, opt_path = step_dir / TRAINER_STATE_FILE, step_dir / OPTIMIZER_FILE
    for path in (state_path, opt_path):
        if not path.is_file():
            raise corrupt_checkpoint(step_dir, path.name, "is missing (the checkpoint is incomplete)")
    try:
        state = json.loads(state_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise corrupt_checkpoint(step_dir, TRAINER_STATE_FILE, f"is not valid JSON ({err})") from None
    problem = _state_problem(state)
    if problem:
        raise corrupt_checkpoint(step_dir, TRAINER_STATE_FILE, problem)
    try:
        with safe_open(str(opt_path), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise corrupt_checkpoint(step_dir, OPTIMIZER_FILE, f"is corrupt or truncated ({err})") from None
    return state


def _state_problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"must hold a JSON object, got {type(state).__name__}"
    for key, types in _STATE_FIELDS.items():
        value = state.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            return f"field {key!r} is missing or of the wrong type ({value!r:.40})"
    if state["step"] < 0 or state["tokens"] < 0:
        return f"negative step/tokens ({state['step']}, {state['tokens']})"
    if not (math.isfinite(state["mse_scale"]) and state["mse_scale"] > 0):
        return f"mse_scale must be a positive finite number, got {state['mse_scale']}"
    if not isinstance(state["rng"].get("torch"), list):
        return "rng.torch (the saved RNG state) is missing"
    if not isinstance(state["dead_tracker"].get("tokens_since_fired"), list):
        return "dead_tracker.tokens_since_fired is missing"
    if not isinstance(state["optimizer_meta"].get("param_groups"), list):
        return "optimizer_meta.param_groups is missing"
    return None


def corrupt_checkpoint(step_dir: Path, name: str, problem: str) -> RunDirError:
    """The error for a damaged checkpoint file, with the fix: fall back to the previous checkpoint."""
    siblings = [p for p in RunDir(step_dir.parent.parent).checkpoints() if p != step_dir]
    fix = (
        f"delete {step_dir} to resume from the previous checkpoint ({siblings[-1].name})"
        if siblings
        else f"it is the run's only checkpoint: delete {step_dir.parent.parent} and train again"
    )
    return RunDirError(f"checkpoint file {step_dir / name} {problem}; {fix}")


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
