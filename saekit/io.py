"""Atomic file and directory writes and hashing: a crash never leaves a half-written file or directory
under the final name, and a replaced one survives until its successor is complete.

atomic_write_text(path, "...")
with atomic_path(path) as tmp: save_file(tensors, tmp)
with staged_directory(target_dir) as tmp: save_file(tensors, tmp / "x.safetensors")   # directories
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TMP_MARK = ".tmp-"
"""Staged siblings are named `.<name>.tmp-<pid>`; `.<name>.old-<pid>` holds a replaced copy briefly."""


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_directory(path: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling directory; when the block finishes, fsync it and put it in place
    of `path`. On Linux an existing `path` is swapped out in one `renameat2(RENAME_EXCHANGE)`, so at every
    instant `path` is either the complete old copy or the complete new one; elsewhere the old copy is
    renamed aside first (a crash in between leaves it as `.<name>.old-<pid>`). If the block raises, `path`
    is untouched. Leftover staging directories of processes that no longer run are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        _swap_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_staging(path: Path) -> None:
    """Delete `.<name>.tmp-<pid>` / `.<name>.old-<pid>` siblings of `path` left by dead processes."""
    for mark in (TMP_MARK, ".old-"):
        for stale in path.parent.glob(f".{path.name}{mark}*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _process_alive(int(pid)):
                logger.info("removing %s left by an interrupted write", stale)
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(directory))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False when the platform cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _swap_into_place(new: Path, dst: Path) -> None:
    if dst.exists() and _exchange(new, dst):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old copy
    else:
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        if dst.exists():
            os.replace(dst, old)
        os.replace(new, dst)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(dst.parent)
