"""Which encoder path a selecting activation takes: the dense GEMM then selection, or the fused tiles.

Neither wins on every machine: the fused path (`saekit.sae.fused_encode`) saves h's trip through memory
and its [B, d_sae] buffer, but runs the GEMM as many smaller calls, which some BLAS/core-count mixes pay
for. So on CPU the choice is measured once per machine and shape at first use (both paths on the real
batch, interleaved, best of `ROUNDS`) and cached in `<cache dir>/encode_path.json` (atomic write), keyed by
CPU model, capability (AVX2/AVX512/AMX), torch version, threads and shape. Small problems (under
`MIN_WORK` h entries) take the dense path unmeasured: there is nothing to save there.

Override with `SAEKIT_ENCODE_PATH=auto|dense|fused` (or `set_encode_path("fused")` in code); the cache
directory is `SAEKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/saekit`, else `~/.cache/saekit`. On CUDA the fused
path is the Triton kernel (`saekit.kernels.fused_topk`) when the Triton backend is active.

    path = encode_path(sae, x, k)        # "dense" | "fused" (and logs why, once per key)
    describe_last_choice()               # one line for `saekit bench`
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from saekit.errors import ConfigError
from saekit.io import atomic_write_json
from saekit.sae.fused_encode import Tiling

logger = logging.getLogger(__name__)

Path_ = Literal["dense", "fused"]
ENV_VAR = "SAEKIT_ENCODE_PATH"
CHOICES = ("auto", "dense", "fused")
TILING = Tiling(rows=1024, latents=4096)
"""Fused tile: 16 MiB of h per tile. Measured (1 thread, B=4096, d_in=768, d_sae=16384, k=32, AVX512 EPYC,
× the dense GEMM): 256x4096 1.23, 1024x4096 1.08, 512x8192 1.06, dense GEMM + row_topk 1.10-1.12."""
MIN_WORK = 1 << 22
"""Below this many h entries (e.g. 1024 × 4096) the dense path is used without measuring."""
ROUNDS = 3
CACHE_NAME = "encode_path.json"

_override: str | None = None
_decided: dict[str, tuple[Path_, str]] = {}
_last: tuple[Path_, str] | None = None


def set_encode_path(choice: str | None) -> None:
    """Force a path for this process (`None`: back to the environment / measurement)."""
    global _override
    if choice is not None and choice not in CHOICES:
        raise ConfigError(f"encode path {choice!r} is not one of {', '.join(CHOICES)}")
    _override = choice
    _decided.clear()


def requested_path() -> str:
    """`set_encode_path`'s choice, else SAEKIT_ENCODE_PATH, else auto."""
    if _override is not None:
        return _override
    raw = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if raw not in CHOICES:
        raise ConfigError(f"{ENV_VAR}={raw!r} is not an encoder path; choose one of {', '.join(CHOICES)}")
    return raw


def cpu_capability() -> str:
    """The vector extension torch's CPU kernels use (e.g. AVX2, AVX512), plus AMX/AVX512-BF16 from
    /proc/cpuinfo where the CPU has them (those decide whether bf16 GEMMs are native)."""
    cap = torch.backends.cpu.get_cpu_capability()
    try:
        flags = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), ""
        )
    except OSError:
        flags = ""
    extra = [name.upper() for name in ("avx512_bf16", "amx_bf16") if f" {name}" in flags]
    return "+".join([cap, *extra])


def cache_dir() -> Path:
    if os.environ.get("SAEKIT_CACHE_DIR"):
        return Path(os.environ["SAEKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "saekit"


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown")


def _key(kind: str, batch: int, d_in: int, d_sae: int, k: int) -> str:
    threads = torch.get_num_threads()
    return (
        f"{_cpu_model()}|{cpu_capability()}|torch {torch.__version__}|threads {threads}|{kind}|"
        f"B {batch} d_in {d_in} d_sae {d_sae} k {k}|tile {TILING.label()}"
    )


def _read_cache() -> dict[str, dict]:
    try:
        return json.loads((cache_dir() / CACHE_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    data = _read_cache()
    data[key] = entry
    try:
        atomic_write_json(cache_dir() / CACHE_NAME, data)
    except OSError as err:  # a read-only home must not stop training: the choice still holds in-process
        logger.warning("could not cache the encoder path choice in %s (%s)", cache_dir(), err)


def _best_of(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def choose_cpu_path(
    kind: str, shape: tuple[int, int, int, int], dense: Callable[[], object], fused: Callable[[], object]
) -> Path_:
    """The CPU path for (kind, (batch, d_in, d_sae, k)): forced, remembered, cached, or measured now."""
    global _last
    requested = requested_path()
    if requested != "auto":
        _last = (requested, f"{ENV_VAR}={requested}")  # type: ignore[assignment]
        return requested  # type: ignore[return-value]
    batch, d_in, d_sae, k = shape
    if batch * d_sae < MIN_WORK:
        _last = ("dense", f"small problem (B·d_sae < {MIN_WORK}): dense, not measured")
        return "dense"
    key = _key(kind, batch, d_in, d_sae, k)
    if key not in _decided:
        _decided[key] = _cached_or_measured(key, dense, fused)
    _last = _decided[key]
    return _last[0]


def _cached_or_measured(
    key: str, dense: Callable[[], object], fused: Callable[[], object]
) -> tuple[Path_, str]:
    entry = _read_cache().get(key)
    if entry is None:
        dense_s, fused_s = _measure(dense, fused)
        choice: Path_ = "fused" if fused_s < dense_s else "dense"
        entry = {"path": choice, "dense_s": dense_s, "fused_s": fused_s, "measured": time.time()}
        _write_cache(key, entry)
        how = "measured now"
    else:
        how = f"cached in {cache_dir() / CACHE_NAME}"
    why = (
        f"{how}: dense {entry['dense_s'] * 1e3:.0f} ms, fused {TILING.label()} tiles "
        f"{entry['fused_s'] * 1e3:.0f} ms on {cpu_capability()}"
    )
    logger.info("encoder path: %s (%s)", entry["path"], why)
    return entry["path"], why


def _measure(dense: Callable[[], object], fused: Callable[[], object]) -> tuple[float, float]:
    """Best-of-ROUNDS seconds of each path, interleaved so machine noise hits both alike (after a warm-up)."""
    dense(), fused()
    d, f = [], []
    for _ in range(ROUNDS):
        d.append(_best_of(dense, 1))
        f.append(_best_of(fused, 1))
    return min(d), min(f)


def describe_last_choice() -> str:
    """The path the last selecting encode took and why, e.g. for `saekit bench`."""
    if _last is None:
        return "encoder path: none chosen yet (no selecting encode ran on CPU)"
    return f"encoder path: {_last[0]} ({_last[1]})"


def last_path() -> Path_ | None:
    """The path the last selecting encode took (None before any)."""
    return None if _last is None else _last[0]


def note_choice(path: Path_, why: str) -> None:
    """Record a choice made elsewhere (CUDA / Triton), so `describe_last_choice` reports it."""
    global _last
    _last = (path, why)
