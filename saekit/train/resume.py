"""Resume rules: the run's own settings win. Keys that change what a run *is* (the SAE and its method keys,
lr, batch size, Adam, seed, data) must equal the run's config.yaml; only SAFE_RESUME_KEYS may change, and
every resume is appended to resumes.jsonl (config.yaml is rewritten with the new safe values).

    cfg = resume_config("configs/topk.yaml", ["run_dir=runs/topk", "total_tokens=400000"])  # CLI --resume
    changes = check_resume(run, cfg)   # RunDirError naming every differing key; else {key: (old, new)}
    record_resume(run, cfg, changes, step_dir, step)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from saekit.config import TrainConfig, from_dict, save_config, to_dict
from saekit.config_io import merge, parse_overrides, read_yaml_mapping, upgrade
from saekit.errors import RunDirError
from saekit.rundir import RunDir
from saekit.train.checkpoint import read_trainer_state

logger = logging.getLogger(__name__)

SAFE_RESUME_KEYS = (
    "total_tokens",
    "log_every",
    "checkpoint_every",
    "progress",
    "device",
    "live.device",
    "log.wandb",
    "log.wandb_project",
    "log.wandb_entity",
    "log.wandb_mode",
    "log.tensorboard",
    "run_dir",
)
"""Keys `--resume` may change: the token budget (to extend or stop earlier), logging and checkpoint
intervals, the progress bar, the trackers (`log.*`), the device (results stay the run's, bit-exactness is
only promised on one device) and the run's location (a moved run). Every other key must match the run."""


def resume_config(config_path: str | Path | None, overrides: list[str] | None) -> TrainConfig:
    """What `saekit train [CONFIG] [k=v …] --resume` trains: the run's saved config with only the keys the
    user set (in CONFIG, then the overrides) applied on top, so an omitted key means "as the run had it".

    The run is `run_dir` from the overrides, else from CONFIG, else TrainConfig's default. `train(cfg,
    resume=True)` then refuses any applied key that changes the run's meaning.
    """
    layers = [upgrade(TrainConfig, read_yaml_mapping(config_path))] if config_path is not None else []
    layers.append(parse_overrides(overrides))
    default_run_dir = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "run_dir")
    run_dir = next((layer["run_dir"] for layer in reversed(layers) if "run_dir" in layer), default_run_dir)
    run = RunDir(str(run_dir))
    _require_run(run)
    merged = to_dict(run.load_config())
    for layer in layers:
        merged = _apply(merged, layer)
    merged["run_dir"] = str(run.path)
    return from_dict(TrainConfig, merged)


def _apply(current: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` merged onto `current`. Method keys given flat (`sae.k=2`) win over the saved `sae.params.k`
    when the config is built (`SaeConfig`); a different method starts from that method's defaults."""
    section = layer.get("sae")
    if not isinstance(section, dict) or not isinstance(current.get("sae"), dict):
        return merge(current, layer)
    saved_sae = current["sae"]
    if section.get("method", saved_sae.get("method")) == saved_sae.get("method"):
        base = saved_sae
    else:
        base = {k: v for k, v in saved_sae.items() if k != "params"}
    rest = {k: v for k, v in layer.items() if k != "sae"}
    return {**merge(current, rest), "sae": merge(base, section)}


def _require_run(run: RunDir) -> None:
    if run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"--resume: run_dir {run.path} is a file; pass the directory of a training run")
    if not run.config_path.is_file():
        raise RunDirError(
            f"--resume: {run.path} is not a run directory (no config.yaml); start a new run without "
            "--resume, or pass run_dir=<the run to continue>"
        )


def check_resume(run: RunDir, cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Refuse (RunDirError, touching nothing) a resume that would contradict the run; return the safe
    changes {dotted key: (run's value, new value)}. Reads only, so it runs before the lock is taken."""
    _require_run(run)
    changes = config_differences(run.load_config(), cfg)
    unsafe = {key: pair for key, pair in changes.items() if key not in SAFE_RESUME_KEYS}
    if unsafe:
        listed = "; ".join(
            f"{key}: run has {_show(old)}, given {_show(new)}" for key, (old, new) in unsafe.items()
        )
        raise RunDirError(
            f"--resume: {run.config_path} differs in settings that change the run — {listed}. Drop them "
            "to continue the run as it was (keys you omit keep the run's values), or start a new run with "
            f"another run_dir=...; only {', '.join(SAFE_RESUME_KEYS[:-1])} may change on resume"
        )
    step_dir = run.latest_checkpoint()
    if step_dir is None:
        raise RunDirError(
            f"--resume: {run.path} has no checkpoint yet (training stopped before its first one), so there "
            "is nothing to resume; start it again without --resume"
        )
    step = read_trainer_state(step_dir)["step"]
    if cfg.total_steps < step:
        raise RunDirError(
            f"--resume: total_tokens={cfg.total_tokens} is {cfg.total_steps} steps of batch_size "
            f"{cfg.batch_size}, but the newest checkpoint ({step_dir.name}) is at step {step}; give "
            f"total_tokens >= {step * cfg.batch_size}"
        )
    return changes


def config_differences(saved: TrainConfig, given: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved, given)} for every key whose value differs; a method's own keys are written
    `sae.<key>` (as in overrides) and left out when the method itself differs (they follow from it)."""
    diffs: dict[str, tuple[Any, Any]] = {}
    _diff(to_dict(saved), to_dict(given), "", diffs)
    if "sae.method" in diffs:
        diffs = {k: v for k, v in diffs.items() if not k.startswith("sae.params.")}
    ordered = sorted(diffs, key=lambda k: (k != "sae.method", k))
    return {key.replace("sae.params.", "sae."): diffs[key] for key in ordered}


_ABSENT = "(absent)"


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str, out: dict[str, tuple[Any, Any]]) -> None:
    """Sections present on both sides are compared key by key; a section on one side only is one entry."""
    for key in {**old, **new}:
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            _diff(a, b, f"{prefix}{key}.", out)
        elif a != b:
            out[f"{prefix}{key}"] = (a, b)


def _show(value: Any, width: int = 60) -> str:
    text = value if value == _ABSENT else json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def record_resume(
    run: RunDir, cfg: TrainConfig, changes: dict[str, tuple[Any, Any]], step_dir: Path, step: int
) -> None:
    """Write the new safe values to config.yaml (atomically) and append this resume to resumes.jsonl."""
    if changes:
        save_config(cfg, run.config_path)
        logger.info(
            "resume changes %s", ", ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())
        )
    run.record_resume(
        {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": step_dir.name,
            "step": step,
            "changed": {key: {"run": old, "now": new} for key, (old, new) in changes.items()},
        }
    )
