"""Optional metric trackers beside metrics.jsonl: Weights & Biases and TensorBoard.

Both packages are optional (`pip install 'saekit[tracking]'`) and imported only when the run asks for them,
so a missing one is a one-line ConfigError at the start of training, before anything is written. A W&B run's
id is derived from the run directory, so `--resume` continues the same W&B run; offline mode writes under
<run_dir>/wandb/ for a later `wandb sync`.

    sinks = open_trackers(cfg.log, run_dir, config=to_dict(cfg), resume=False)
    sinks.log(summary, step=summary["step"]); sinks.close()
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

from saekit.config_train import LogConfig
from saekit.errors import ConfigError

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
"""W&B writes its files under <run_dir>/wandb/ (its own convention for `dir=`)."""


def require_trackers(cfg: LogConfig) -> None:
    """ConfigError (one line, with the fix) when an enabled tracker's package is not installed."""
    if cfg.wandb:
        _import_wandb()
    if cfg.tensorboard:
        _import_tensorboard()


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise _missing("log.wandb", "wandb") from None
    return wandb


def _import_tensorboard() -> Any:
    try:
        import torch.utils.tensorboard as tensorboard  # needs the tensorboard package
    except ImportError:
        raise _missing("log.tensorboard", "tensorboard") from None
    return tensorboard


def _missing(key: str, package: str) -> ConfigError:
    return ConfigError(
        f"{key}: true needs the {package} package, which is not installed; `pip install {package}` "
        f"(or `pip install 'saekit[tracking]'`), or set {key}=false"
    )


class Trackers:
    """The enabled trackers; `log` sends one metrics.jsonl row to each (numbers only)."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def log(self, summary: dict[str, Any], step: int) -> None:
        scalars = {
            k: float(v)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        for sink in self.sinks:
            sink.log(scalars, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_trackers(cfg: LogConfig, run_dir: Path, *, config: dict[str, Any], resume: bool) -> Trackers:
    require_trackers(cfg)
    sinks: list[Any] = []
    if cfg.wandb:
        sinks.append(_WandbSink(cfg, Path(run_dir), config, resume))
    if cfg.tensorboard:
        sinks.append(_TensorBoardSink(Path(run_dir) / TENSORBOARD_DIR))
    return Trackers(sinks)


def wandb_run_id(run_dir: Path) -> str:
    """A stable id per run directory, so a resumed run appends to the same W&B run."""
    return "saekit-" + hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


class _WandbSink:
    def __init__(self, cfg: LogConfig, run_dir: Path, config: dict[str, Any], resume: bool) -> None:
        wandb = _import_wandb()
        self.run = wandb.init(
            project=cfg.wandb_project,
            entity=cfg.wandb_entity,
            name=run_dir.name,
            id=wandb_run_id(run_dir),
            resume="allow" if resume else None,
            mode=cfg.wandb_mode,
            dir=str(run_dir),
            config=config,
        )
        logger.info("wandb: logging to project %s (%s)", cfg.wandb_project, cfg.wandb_mode)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class _TensorBoardSink:
    def __init__(self, directory: Path) -> None:
        module = _import_tensorboard()
        self.writer = module.SummaryWriter(log_dir=str(directory))
        logger.info("tensorboard: writing events to %s", directory)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            if key != "step":
                self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
