"""Taking a run directory safely: refuse what is not a saekit run, one writer at a time, and a start that
fails before its first checkpoint leaves nothing behind.

    check_new_run(run)                    # read-only refusals: a file, a run, a folder that is not a run
    with RunClaim(run) as claim:          # creates the directory, takes .saekit.lock or fails at once
        try: ...
        except BaseException: claim.undo(); raise      # removes only what this start created

The lock is a `filelock.FileLock` (flock on POSIX) taken with timeout 0: a second `saekit train` on the same
run directory fails at once instead of interleaving metrics and checkpoints. The lock file stays in place
(deleting it on release would let two writers lock two different inodes of the same name); its presence
also marks a directory that `saekit train` started in, so a start killed before its first checkpoint can be
started again.

Under torchrun only rank 0 takes the claim (the other ranks never create, lock or write anything in the run
directory): `RunClaim(run, ranks)` tells the other ranks, waiting in `ranks.follow()`, whether it got the
lock, so a run directory in use fails every rank with the same one-line error instead of a hang.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from filelock import FileLock, Timeout

from saekit.errors import RunDirError
from saekit.io import TMP_MARK
from saekit.ranks import Ranks
from saekit.rundir import CONFIG_FILE, LOCK_FILE, METRICS_FILE, OLD_MARK, RESUMES_FILE, RunDir
from saekit.train.tracking import TENSORBOARD_DIR, WANDB_DIR

logger = logging.getLogger(__name__)

START_FILES = frozenset({CONFIG_FILE, METRICS_FILE, RESUMES_FILE, TENSORBOARD_DIR, WANDB_DIR})
"""What a start writes before its first checkpoint (the trackers' directories included); with the lock file
beside them, a directory holding only these is an interrupted start of ours, which a new start may replace."""


def check_new_run(run: RunDir) -> None:
    """Refuse to start a new run in `run.path` unless it is absent, empty, or an interrupted start."""
    path = run.path
    if not path.exists():
        return
    if not path.is_dir():
        raise RunDirError(
            f"run_dir {path} is a file, not a directory; choose another run_dir=... (nothing changed)"
        )
    if run.has_training():
        raise RunDirError(
            f"{path} already holds a run; pass --resume to continue it, or choose another run_dir=... "
            "(nothing was overwritten)"
        )
    foreign = _foreign_entries(run)
    if foreign:
        raise RunDirError(
            f"run_dir {path} is not empty and holds no saekit checkpoint ({', '.join(foreign[:5])}); choose "
            "a new or empty run_dir=..., or move those files away (nothing was changed)"
        )


def _foreign_entries(run: RunDir) -> list[str]:
    names = sorted(e.name for e in run.path.iterdir() if e.name != LOCK_FILE and not _is_staging(e.name))
    if names and run.lock_path.is_file() and set(names) <= START_FILES:
        return []  # our own start, killed before its first checkpoint
    return names


def _is_staging(name: str) -> bool:
    return name.startswith(".") and (TMP_MARK in name or OLD_MARK in name)


def clear_interrupted_start(claim: RunClaim) -> None:
    """Remove what a start killed before its first checkpoint left (config.yaml, metrics.jsonl), so the new
    start never appends to its log. Call with the claim held, after `check_new_run`."""
    run = claim.run
    leftovers = [name for name in sorted(START_FILES) if (run.path / name).exists()]
    if leftovers:
        logger.warning("%s: starting over a start that stopped before its first checkpoint", run.path)
    for name in leftovers:
        path = run.path / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        claim.before.discard(name)  # what this start writes under these names is its own


class RunClaim:
    """The run directory created if needed and locked for this process; `undo()` removes what this
    claim's start created (the directories it made, else the entries that were not there before)."""

    def __init__(self, run: RunDir, ranks: Ranks | None = None) -> None:
        self.run, self.ranks = run, ranks or Ranks()
        self.made = _first_missing(run.path)
        self.before = set(os.listdir(run.path)) if self.made is None else set()
        self.lock = FileLock(str(run.lock_path), timeout=0)

    def __enter__(self) -> RunClaim:
        with self.ranks.lead():
            self._take()
        return self

    def _take(self) -> None:
        try:
            self.run.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(
                f"cannot create run_dir {self.run.path} ({err.strerror or err}); choose a run_dir=... in a "
                "writable directory"
            ) from None
        try:
            self.lock.acquire()
        except Timeout:
            raise RunDirError(
                f"{self.run.path} is in use by another `saekit train` (it holds {self.run.lock_path}); wait "
                "for it to finish or stop it, or choose another run_dir=..."
            ) from None
        except OSError as err:
            raise RunDirError(
                f"cannot lock {self.run.lock_path} ({err.strerror or err}); check permissions"
            ) from None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

    def undo(self) -> None:
        if self.made is not None:
            shutil.rmtree(self.made, ignore_errors=True)
        else:
            for name in set(os.listdir(self.run.path)) - self.before:
                target = self.run.path / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(
                    missing_ok=True
                )
        logger.info("the failed start left nothing behind in %s", self.run.path)


def _first_missing(path: Path) -> Path | None:
    """The top-most directory of `path` that does not exist yet (what mkdir(parents=True) creates)."""
    path = Path(os.path.abspath(path))
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path
