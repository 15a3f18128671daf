"""Which implementation the sparse ops use: Triton kernels or their pure-torch twins, chosen once.

`SAEKIT_KERNELS` decides (read the first time `kernel_backend()` is called in a process):
- `auto` (default): Triton iff a CUDA device is visible and `triton` imports; otherwise torch.
- `triton`: Triton, or an error saying why it cannot run. This is the only way to get the CPU interpreter
  (`TRITON_INTERPRET=1`), which is 1,000x+ slower and meant for tests, never picked by `auto`.
- `torch`: always the torch twin.
The choice and its reason are logged once at INFO.

    from saekit.kernels.backend import kernel_backend
    if kernel_backend() == "triton":
        ...  # call triton_sparse_decode, else the torch twin
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Literal

from saekit.errors import ConfigError

logger = logging.getLogger(__name__)

Backend = Literal["triton", "torch"]
ENV_VAR = "SAEKIT_KERNELS"
CHOICES = ("auto", "triton", "torch")


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_import_error() -> str | None:
    """None when `import triton` works, else the reason it does not."""
    try:
        import triton  # noqa: F401
    except Exception as err:  # ImportError, or a broken install raising something else at import
        return f"triton does not import ({type(err).__name__}: {err})"
    return None


def triton_available() -> tuple[bool, str]:
    """Whether Triton kernels can run on a GPU here, with a one-line reason either way.

    The CPU interpreter does not count: it only runs when `SAEKIT_KERNELS=triton` forces it.
    """
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    error = _triton_import_error()
    if error is not None:
        return False, error
    import triton

    return True, f"CUDA device {torch.cuda.get_device_name()} and triton {triton.__version__}"


def _read_choice() -> str:
    raw = os.environ.get(ENV_VAR, "auto")
    choice = raw.strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"{ENV_VAR}={raw!r} is not a kernel backend; choose one of {', '.join(CHOICES)}")
    return choice


def _decide() -> tuple[Backend, str]:
    choice = _read_choice()
    if choice == "torch":
        return "torch", f"{ENV_VAR}=torch"
    ok, why = triton_available()
    if ok:
        return "triton", f"{ENV_VAR}={choice}: {why}"
    if choice == "auto":
        return "torch", f"{ENV_VAR}=auto and {why}"
    # Explicit `triton` without a GPU: allowed only through the interpreter, which must be set up before
    # the kernels are imported, so we can only check that it was requested and that triton imports.
    error = _triton_import_error()
    if _interpreter_requested() and error is None:
        return "triton", f"{ENV_VAR}=triton with TRITON_INTERPRET=1 ({why}; CPU interpreter, tests only)"
    raise ConfigError(
        f"{ENV_VAR}=triton but Triton cannot run here: {error or why}. "
        f"Unset {ENV_VAR} (auto) or set {ENV_VAR}=torch; for CPU tests also set TRITON_INTERPRET=1."
    )


@functools.cache
def kernel_backend() -> Backend:
    """The process-wide kernel backend ("triton" or "torch"), decided and logged on first call."""
    backend, reason = _decide()
    logger.info("saekit kernels: using %s (%s)", backend, reason)
    return backend


def reset_kernel_backend() -> None:
    """Forget the cached choice so the next `kernel_backend()` re-reads the environment (for tests)."""
    kernel_backend.cache_clear()
