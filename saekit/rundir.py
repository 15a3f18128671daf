"""The run directory: the one module that knows its layout, finds its checkpoints and loads what it holds.

    runs/<name>/
        config.yaml                      resolved TrainConfig (format_version 2; older ones are upgraded)
        metrics.jsonl                    one JSON object per log window
        checkpoints/step_0000100/        sae/ + optimizer.safetensors + trainer_state.json (resume)
        final/                           the finished SAE (cfg.json + sae.safetensors + trainer_state.json)
        eval.json, index/                written by `saekit eval` / `saekit index`
        resumes.jsonl                    one line per `--resume` (step, settings it changed)
        .saekit.lock                     held by the one `saekit train` writing the run (never deleted)

Every directory is written through `saekit.io.staged_directory` (crash-safe). Nobody else spells these names.
Paths inside config.yaml are absolute (`absolute_paths`, at train time); `load_config` resolves the relative
ones older runs stored by one documented rule, so the CLI, the app and notebooks agree.

    run = RunDir("runs/topk")
    cfg = run.load_config(); sae = run.load_sae(); step_dir = run.latest_checkpoint()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from saekit.config import TrainConfig
from saekit.config_io import load_saved_config
from saekit.errors import ConfigError, RunDirError
from saekit.io import TMP_MARK, remove_stale_staging
from saekit.sae import Sae, load_sae
from saekit.sae.foreign import is_foreign_dir

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step_"
SAE_SUBDIR = "sae"
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
EVAL_FILE = "eval.json"
INDEX_DIR = "index"
RESUMES_FILE = "resumes.jsonl"
LOCK_FILE = ".saekit.lock"
OLD_MARK = ".old-"
RUN_SUBDIRS = frozenset({FINAL_DIR, CHECKPOINTS_DIR, INDEX_DIR})
"""Sub-directories of a run, which never hold another run (discovery skips them)."""


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:07d}"


@dataclass(frozen=True)
class RunDir:
    """Paths and loaders of one training run directory (which need not exist yet)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # ------------------------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def final_dir(self) -> Path:
        return self.path / FINAL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def eval_path(self) -> Path:
        return self.path / EVAL_FILE

    @property
    def index_dir(self) -> Path:
        return self.path / INDEX_DIR

    @property
    def resumes_path(self) -> Path:
        return self.path / RESUMES_FILE

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def step_dir(self, step: int) -> Path:
        return self.checkpoints_dir / step_dir_name(step)

    # ------------------------------------------------------------------------------------ state

    def checkpoints(self) -> list[Path]:
        """Complete training checkpoints, oldest first (staging directories are dot-named and skipped)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(
            p for p in self.checkpoints_dir.iterdir() if p.name.startswith(STEP_PREFIX) and p.is_dir()
        )

    def latest_checkpoint(self) -> Path | None:
        steps = self.checkpoints()
        return steps[-1] if steps else None

    def is_finished(self) -> bool:
        """True once training wrote `final/`."""
        return (self.final_dir / "cfg.json").is_file()

    def has_training(self) -> bool:
        """True when training started here (a checkpoint or final/ exists): resume it, never overwrite."""
        return self.final_dir.exists() or self.checkpoints_dir.exists()

    def is_run(self) -> bool:
        """A run directory with an SAE to show: config.yaml plus final/ or a checkpoint's sae/."""
        if not self.config_path.is_file():
            return False
        return self.final_dir.is_dir() or any(
            (p / SAE_SUBDIR / "cfg.json").is_file() for p in self.checkpoints()
        )

    def sae_dir(self) -> Path:
        """`final/`, else the newest checkpoint's `sae/` (with a warning: training is unfinished)."""
        if self.is_finished():
            return self.final_dir
        steps = [p for p in self.checkpoints() if (p / SAE_SUBDIR / "cfg.json").is_file()]
        if not steps:
            raise RunDirError(
                f"{self.path} has no SAE checkpoint: expected {self.final_dir}/ (written when `saekit train` "
                f"finishes) or {self.checkpoints_dir}/{STEP_PREFIX}*/{SAE_SUBDIR}/; train one with "
                f"`saekit train CONFIG.yaml run_dir={self.path}`"
            )
        logger.warning("%s has no final/ checkpoint (training unfinished?); using %s", self.path, steps[-1])
        return steps[-1] / SAE_SUBDIR

    def remove_stale_staging(self) -> None:
        """Delete staging (`.<name>.tmp-<pid>`) and set-aside (`.<name>.old-<pid>`) leftovers of processes
        that no longer run, in the run directory and in checkpoints/ (a kill -9 mid-write leaves them)."""
        for directory in (self.path, self.checkpoints_dir):
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                name = entry.name
                for mark in (TMP_MARK, OLD_MARK):
                    if name.startswith(".") and mark in name:
                        remove_stale_staging(directory / name[1:].rsplit(mark, 1)[0])

    def record_resume(self, entry: dict[str, Any]) -> None:
        """Append one line to resumes.jsonl (what a `--resume` changed), flushed to disk."""
        with open(self.resumes_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # ------------------------------------------------------------------------------------ loaders

    def load_config(self) -> TrainConfig:
        """The resolved training config, upgraded from older formats and validated.

        Since saekit stores paths absolute, `cache_dir` is used as written. A relative `cache_dir` (runs
        written by older versions, or a hand-edited file) was relative to the directory training ran in;
        it is resolved against the first of these bases where it exists: (1) that directory, recovered from
        a relative `run_dir` that ends this run's path (run_dir runs/topk at /p/runs/topk → /p); (2) the
        current directory; (3) the run's parent directories, nearest first. When it exists under none of
        them, base (1) is used if known, else the current directory (so the error names a full path).
        """
        if not self.path.is_dir():
            raise RunDirError(
                f"run directory {self.path} does not exist; create it with `saekit train CONFIG.yaml "
                f"run_dir={self.path}` or pass the directory a training run wrote"
            )
        if not self.config_path.is_file():
            raise RunDirError(
                f"{self.path} is not a run directory (no {CONFIG_FILE}); `saekit train` writes one — pass "
                "the run_dir of a training run"
            )
        try:
            cfg = load_saved_config(TrainConfig, self.config_path)
        except ConfigError as err:
            where = "" if str(self.config_path) in str(err) else f"{self.config_path}: "
            raise RunDirError(f"{where}{err}") from None
        if cfg.cache_dir is not None and not Path(cfg.cache_dir).expanduser().is_absolute():
            cfg = dataclasses.replace(cfg, cache_dir=str(self._resolve_relative(cfg.cache_dir, cfg.run_dir)))
        return cfg

    def _resolve_relative(self, relative: str, stored_run_dir: str) -> Path:
        """`relative` (a path the training process wrote relative to its working directory) made absolute
        by the rule in `load_config`'s docstring."""
        here = Path(os.path.abspath(self.path))
        bases: list[Path] = []
        stored = Path(stored_run_dir)
        n = len(stored.parts)
        if not stored.is_absolute() and 0 < n < len(here.parts) and here.parts[-n:] == stored.parts:
            bases.append(Path(*here.parts[:-n]))
        bases += [Path.cwd(), *here.parents]
        for base in bases:
            if (base / relative).exists():
                return base / relative
        return bases[0] / relative

    def load_sae(self, device: str = "cpu") -> Sae:
        """The run's SAE (final/, else the newest checkpoint) in inference mode; a SAELens / sparsify /
        dictionary_learning directory placed there is converted on the fly, as `Sae.load` does."""
        sae_dir = self.sae_dir()
        if is_foreign_dir(sae_dir):
            return Sae.load(sae_dir, device)
        return load_sae(sae_dir, device=device, v1_objective=self.format1_objective())

    def format1_objective(self) -> str | None:
        """The `objective` of a format-1 config.yaml, which format-1 cfg.json files did not record."""
        try:
            raw = yaml.safe_load(self.config_path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return None
        return raw.get("objective") if isinstance(raw, dict) and raw.get("format_version") == 1 else None

    def trainer_state(self) -> dict[str, Any] | None:
        """trainer_state.json of final/, else of the newest checkpoint (None when neither has one)."""
        candidates = [self.final_dir, *reversed(self.checkpoints())]
        for step_dir in candidates:
            path = step_dir / TRAINER_STATE_FILE
            if path.is_file():
                state = json.loads(path.read_text())
                state.pop("optimizer_meta", None)  # large and of no use to a reader
                state["checkpoint"] = str(step_dir)
                return state
        return None


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its filesystem paths absolute (run_dir, cache_dir, and live.model/live.corpus when they
    name an existing local path), as they are stored in config.yaml: a relative path would later be
    resolved against whatever directory the app or a notebook runs in."""
    changes: dict[str, Any] = {"run_dir": _absolute(cfg.run_dir)}
    if cfg.cache_dir is not None:
        changes["cache_dir"] = _absolute(cfg.cache_dir)
    if cfg.live is not None:
        live = {
            key: _absolute(value)
            for key in ("model", "corpus")
            if (value := getattr(cfg.live, key)) not in _NAMED_SOURCES and Path(value).expanduser().exists()
        }
        changes["live"] = dataclasses.replace(cfg.live, **live)
    return dataclasses.replace(cfg, **changes)


_NAMED_SOURCES = ("embedded", "tiny")
"""Model and corpus names that are not paths even if a directory of that name happens to exist here."""


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
