"""Errors raised at the boundaries (configs, files, models, CLI). Each message says how to fix it.

The CLI turns any `SaekitError` into a one-line message and exit code 2, without a traceback. Expected
operating-system failures (disk full, permission denied, a file where a directory is needed, a missing
path) become a `ResourceError` naming the path and the fix, through `as_resource_error`:

    try: write_things(out_dir)
    except OSError as err: raise (as_resource_error(err) or err) from err
    check_directory_target(Path(cfg.out_dir), "out_dir")      # before any work: a file in the way?
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class SaekitError(Exception):
    """Base class: user-facing problems whose message says what to do."""


class ConfigError(SaekitError, ValueError):
    """A config file or override is wrong (unknown key, wrong type, bad value)."""


class HookpointError(SaekitError, ValueError):
    """A hook name the model does not have."""


class ModelLoadError(SaekitError, RuntimeError):
    """A model could not be loaded (offline hub name, bad directory, missing package)."""


class CorpusError(SaekitError, ValueError):
    """A corpus is empty, missing or malformed."""


class CacheError(SaekitError, ValueError):
    """An activation cache is missing, corrupt, truncated or inconsistent."""


class RunDirError(SaekitError, FileNotFoundError):
    """A run directory or checkpoint is missing or incomplete."""


class DataError(SaekitError, ValueError):
    """Activations are unusable (NaN/inf, wrong width)."""


class ResourceError(SaekitError, OSError):
    """The machine refused: disk full, permission denied, a file where a directory is needed, a missing
    path, out of memory. The message names the path (where there is one) and what to do."""

    def __init__(self, message: str, *, code: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno, self.filename = code, path

    def __str__(self) -> str:  # OSError would print "[Errno N] None: path" once errno is set
        return self.message


_DISK_FULL = (
    "the disk is full; free space or choose a path on a larger disk, then re-run (completed cache shards "
    "and checkpoints are kept, so the re-run resumes)"
)
_NO_PERMISSION = "permission denied; choose a directory you can write to, or fix its permissions"
_FIXES = {
    errno.ENOSPC: _DISK_FULL,
    errno.EDQUOT: _DISK_FULL,
    errno.EACCES: _NO_PERMISSION,
    errno.EPERM: _NO_PERMISSION,
    errno.EROFS: "the file system is read-only; choose a writable path",
    errno.ENOENT: "it does not exist; check the path (relative paths start at the working directory)",
    errno.EISDIR: "it is a directory where a file is needed; pass the file inside it or another path",
    errno.ENAMETOOLONG: "the name is too long for this file system; choose a shorter path",
    errno.EMFILE: "too many open files; raise the limit (`ulimit -n`) or close other programs",
}
# A Rust library (safetensors, tokenizers) reports an OS failure only as text: "... (os error 28) ...".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_RUST_PATH = re.compile(r'at path "([^"]+)"')


def as_resource_error(err: BaseException) -> ResourceError | None:
    """`err` as a one-line ResourceError naming the path and the fix, or None when it is not an expected
    resource failure (then it is a bug or an unchecked input and should surface as such)."""
    if isinstance(err, ResourceError):
        return err
    if _out_of_memory(err):
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return ResourceError(
            f"out of memory ({first[:200]}); reduce batch_size, d_sae or shuffle_buffer_tokens, "
            "or use a machine (or device) with more memory"
        )
    code, path = _errno_and_path(err)
    if code is None:
        return None
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(path)
        if blocker is None:
            return None
        message = f"{blocker} is a file where a directory is needed; remove it or choose another path"
    elif code in (errno.ENOSPC, errno.EDQUOT) and path:  # the path is often a temporary file's
        message = f"writing into {Path(path).parent}: {_FIXES[code]}"
    elif code in _FIXES:
        message = f"{path}: {_FIXES[code]}" if path else _FIXES[code]
    else:
        return None
    return ResourceError(message, code=code, path=path)


def _out_of_memory(err: BaseException) -> bool:
    # torch reports a failed CPU allocation as a RuntimeError ("DefaultCPUAllocator: can't allocate memory")
    # and a CUDA one as torch.OutOfMemoryError
    return (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or (isinstance(err, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(err))
    )


def _errno_and_path(err: BaseException) -> tuple[int | None, str | None]:
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno, (str(err.filename) if err.filename is not None else None)
    match = _RUST_OS_ERROR.search(str(err))
    if match is None:
        return None, None
    path = _RUST_PATH.search(str(err))
    return int(match.group(1)), (path.group(1) if path else None)


def _file_in_the_way(path: str | None) -> Path | None:
    """The path itself or its nearest ancestor that exists but is not a directory."""
    if path is None:
        return None
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def check_directory_target(path: Path, key: str) -> None:
    """Raise ResourceError if `path` (a directory saekit is about to create or write into) cannot be: it or
    an ancestor exists as a file, or the nearest existing directory is not writable. Call it before any
    expensive work starts, so a long run does not fail at its first write."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), None)
    if existing is None:
        return
    if not existing.is_dir():
        what = f"{key}={path}" if existing == path else f"{key}={path}: {existing}"
        raise ResourceError(
            f"{what} is a file where a directory is needed; choose another {key} or remove the file",
            code=errno.ENOTDIR,
            path=str(existing),
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ResourceError(
            f"{key}={path}: cannot write into {existing} (permission denied); choose a directory you can "
            "write to, or fix its permissions",
            code=errno.EACCES,
            path=str(existing),
        )


def one_line(text: str, limit: int = 2000) -> str:
    """`text` squeezed onto one line (the CLI's error line), cut to `limit` characters."""
    squeezed = " ".join(text.split())
    return squeezed if len(squeezed) <= limit else squeezed[: limit - 3] + "..."
