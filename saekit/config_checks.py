"""Checks shared by the stage configs' `__post_init__` (pure) and by the stages at the point of use (device
availability: a config written on a GPU machine must still load on a laptop, e.g. in the app). It imports
only `saekit.errors` and torch, so every layer may use it.

    require_positive(self, "batch_size", "total_tokens")     # in __post_init__
    require_device(cfg.device, "device")                      # where the device is about to be used
"""

from __future__ import annotations

from typing import Any

from saekit.errors import ConfigError

DEVICE_FIX = "use cpu, cuda, cuda:N or mps"


def device_syntax_ok(name: str) -> bool:
    """Whether torch can parse `name` as a device (availability is checked where it is used, so a config
    written on a GPU machine still loads on a laptop; see `require_device`)."""
    import torch

    try:
        torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def require_device_name(name: str, key: str = "device") -> None:
    """ConfigError unless torch can parse `name` (for `__post_init__`: no availability check)."""
    if not device_syntax_ok(name):
        raise ConfigError(f"{key}: {name!r} is not a torch device; {DEVICE_FIX}")


def require_device(name: str, key: str = "device") -> None:
    """Raise ConfigError, with the fix, unless device `name` can be used on this machine."""
    import torch

    if not device_syntax_ok(name):
        raise ConfigError(f"{key}={name!r} is not a torch device; {DEVICE_FIX}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(
                f"{key}={name}: no CUDA device is available (torch {torch.__version__}, {build}); set "
                f"{key}=cpu, or run on a machine with an NVIDIA GPU and a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{key}={name}: this machine has {count} CUDA device(s); use cuda:0..cuda:{count - 1} "
                f"or {key}=cpu"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={name}: Apple MPS is not available on this machine; set {key}=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key}={name}: saekit runs on cpu, cuda or mps; {DEVICE_FIX}")


def require_positive(cfg: Any, *names: str) -> None:
    """ConfigError naming the first of `names` (int/float fields of `cfg`) that is not > 0."""
    for name in names:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name}: must be positive, got {getattr(cfg, name)!r}")


def require_path(value: str | None, name: str, example: str) -> None:
    """A path setting must be a non-empty string (an empty one would write into the working directory)."""
    if value is not None and not str(value).strip():
        raise ConfigError(f"{name}: must be a path, e.g. {name}={example}")
