"""Where saekit keeps machine-local caches (dequantised embedded model, built demo corpus).

The root is `$SAEKIT_CACHE_DIR` when set, else `$XDG_CACHE_HOME/saekit`, else `~/.cache/saekit`. Nothing
under it is ever committed; deleting it only costs a rebuild.

    root = saekit_cache_dir()            # e.g. ~/.cache/saekit
    models = saekit_cache_dir("models")  # created on demand
"""

from __future__ import annotations

import os
from pathlib import Path


def saekit_cache_dir(*parts: str) -> Path:
    """Return (and create) the saekit cache root or a sub-directory of it."""
    override = os.environ.get("SAEKIT_CACHE_DIR")
    if override:
        root = Path(override).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "saekit"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
