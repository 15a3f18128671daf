"""Checks on an SAE checkpoint that run before anything is allocated (used by `load_sae`).

A 1 KB `cfg.json` must not be able to drive memory: its keys are type- and range-checked, the weights
file's header (tensor names, dtypes and shapes, read by `safe_open` without loading any tensor) must agree
with it, and the SAE's parameter memory must fit in the memory available. Every failure is a RunDirError
naming the file and the fix.

    meta = read_cfg_json(path / "cfg.json")
    header = read_weights_header(path / "sae.safetensors")
    check_shapes(meta, header, path / "sae.safetensors")
    check_memory(meta, header, path / "sae.safetensors", device="cpu")
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from saekit.config_io import from_dict
from saekit.errors import ConfigError, RunDirError
from saekit.sae.config import SaeConfig, upgrade_sae_v1

FORMAT_VERSION = 2
REQUIRED = ("W_enc", "b_enc", "W_dec", "b_dec")
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_RESAVE = "re-save the checkpoint with Sae.save (or re-train the run)"
MEMINFO = Path("/proc/meminfo")
LOAD_OVERHEAD = 1.5
"""Peak memory of a load as a multiple of the parameters: the SAE plus one tensor read at a time (W_enc)."""


@dataclass(frozen=True)
class CheckpointMeta:
    """cfg.json, validated: everything `Sae(...)` is built from."""

    d_in: int
    d_sae: int
    cfg: SaeConfig
    act_scale: float = 1.0
    hookpoint: str = ""
    model_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def read_cfg_json(cfg_path: Path, v1_objective: str | None = None) -> CheckpointMeta:
    """Parse and validate cfg.json (types, ranges, the method section); raises RunDirError."""
    raw = _parse_json(cfg_path)
    version = raw.get("format_version", 1)
    if _is_int(version) and version > FORMAT_VERSION:
        raise RunDirError(
            f"{cfg_path} has format_version {version!r}, newer than this saekit understands "
            f"({FORMAT_VERSION}); upgrade saekit to load it"
        )
    if "d_in" not in raw or "sae" not in raw:
        raise RunDirError(f"{cfg_path} lacks 'd_in' or 'sae'; it was not written by Sae.save")
    for key, (valid, expected) in _TOP_LEVEL.items():
        if key in raw and not valid(raw[key]):
            _reject(cfg_path, key, raw[key], expected)
    cfg = _sae_config(raw["sae"], version, v1_objective, cfg_path)
    d_sae = cfg.resolve_d_sae(raw["d_in"])
    if raw.get("d_sae", d_sae) != d_sae:
        raise RunDirError(
            f"{cfg_path}: d_sae={raw['d_sae']} but its sae section gives d_sae={d_sae}; the file is "
            f"damaged — {_RESAVE}"
        )
    return CheckpointMeta(
        d_in=raw["d_in"],
        d_sae=d_sae,
        cfg=cfg,
        act_scale=float(raw.get("act_scale", 1.0)),
        hookpoint=raw.get("hookpoint", ""),
        model_id=raw.get("model_id", ""),
        extra=raw.get("extra") or {},
    )


def _parse_json(cfg_path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise RunDirError(f"{cfg_path} is not valid JSON ({err}); {_RESAVE}") from None
    if not isinstance(raw, dict):
        raise RunDirError(f"{cfg_path} is not valid JSON (top level is not an object); {_RESAVE}")
    return raw


def _sae_config(sae_raw: dict[str, Any], version: int, v1_objective: str | None, cfg_path: Path) -> SaeConfig:
    try:
        section = sae_raw if version >= 2 else upgrade_sae_v1(sae_raw, v1_objective)
        return from_dict(SaeConfig, section, prefix="sae.")
    except ConfigError as err:
        custom = "unknown method" in str(err)
        hint = "if it uses a custom method, import the module that registers it first" if custom else _RESAVE
        raise RunDirError(f"{cfg_path}: invalid SAE config ({err}); {hint}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # a section of the wrong shape
        raise RunDirError(
            f"{cfg_path}: invalid SAE config ({type(err).__name__}: {err}); {_RESAVE}"
        ) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _is_scale(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


_TOP_LEVEL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format_version": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "d_in": (_is_positive_int, "a positive integer"),
    "d_sae": (_is_positive_int, "a positive integer"),
    "sae": (lambda v: isinstance(v, dict), "a mapping (the SAE config)"),
    "act_scale": (_is_scale, "a finite number > 0"),
    "hookpoint": (lambda v: isinstance(v, str), "a string"),
    "model_id": (lambda v: isinstance(v, str), "a string"),
    "extra": (lambda v: v is None or isinstance(v, dict), "a mapping"),
    "dtype": (lambda v: v == "float32", "'float32'"),
}
"""cfg.json's top-level keys: a check and what it expects (an absent key takes its default)."""


def _reject(cfg_path: Path, key: str, value: Any, expected: str) -> None:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise RunDirError(f"{cfg_path}: {key} must be {expected}, got {shown}; the file is damaged — {_RESAVE}")


# ---------------------------------------------------------------------------------------- weights header


def read_weights_header(weights_path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, safetensors dtype)} from the header alone; a truncated file fails here."""
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            header = {}
            for name in f.keys():  # noqa: SIM118  (safe_open is not a mapping)
                view = f.get_slice(name)
                header[name] = (tuple(view.get_shape()), view.get_dtype())
            return header
    except (SafetensorError, OSError, ValueError) as err:
        raise RunDirError(f"{weights_path} is corrupt or truncated ({err}); {_RESAVE}") from None


def expected_shapes(meta: CheckpointMeta) -> dict[str, tuple[int, ...]]:
    d_in, d_sae = meta.d_in, meta.d_sae
    return {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}


def check_shapes(
    meta: CheckpointMeta, header: dict[str, tuple[tuple[int, ...], str]], weights_path: Path
) -> None:
    """Every required tensor present, floating point, and of the shape cfg.json implies."""
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise RunDirError(f"{weights_path} lacks tensors {missing}; it was not written by Sae.save")
    shapes = expected_shapes(meta)
    if "threshold" in header:
        shapes["threshold"] = (meta.d_sae,)
    for name, want in shapes.items():
        shape, dtype = header[name]
        if dtype not in _FLOAT_DTYPES:
            raise RunDirError(f"{weights_path}: {name} has dtype {dtype}, expected float32; {_RESAVE}")
        if shape != want:
            raise RunDirError(
                f"{weights_path}: {name} has shape {shape} but cfg.json (d_in={meta.d_in}, "
                f"d_sae={meta.d_sae}) implies {want}; the two files do not belong together — {_RESAVE}"
            )


# ---------------------------------------------------------------------------------------- memory


def parameter_bytes(meta: CheckpointMeta, with_threshold: bool) -> int:
    """fp32 bytes of the SAE's parameters (Adam state is not needed to load it)."""
    d_in, d_sae = meta.d_in, meta.d_sae
    return 4 * (2 * d_in * d_sae + d_sae + d_in + (d_sae if with_threshold else 0))


def check_memory(
    meta: CheckpointMeta,
    header: dict[str, tuple[tuple[int, ...], str]],
    weights_path: Path,
    device: str | torch.device = "cpu",
) -> None:
    """Refuse an SAE whose load would not fit in the memory available now (host, and the GPU's)."""
    params = parameter_bytes(meta, "threshold" in header)
    need = int(params * LOAD_OVERHEAD)
    places = [("memory", available_memory_bytes(), need)]  # the SAE is built on the host first
    if torch.device(device).type == "cuda":
        places.append(("GPU memory", available_gpu_bytes(device), params))
    for what, available, required in places:
        if available is not None and required > available:
            raise RunDirError(
                f"{weights_path}: this SAE (d_in={meta.d_in}, d_sae={meta.d_sae}) needs about "
                f"{format_bytes(required)} of {what} to load but only {format_bytes(available)} is "
                "available; free memory or load it on a larger machine (if d_sae looks wrong, the "
                f"checkpoint is damaged — {_RESAVE})"
            )


def available_memory_bytes() -> int | None:
    """Host memory available for new allocations: /proc/meminfo MemAvailable, else psutil, else the
    free physical pages, else None (no check)."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # not installed, or no support on this platform
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def available_gpu_bytes(device: str | torch.device) -> int | None:
    try:
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    except (RuntimeError, AssertionError, ValueError):  # no CUDA runtime: the move will report it
        return None


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
