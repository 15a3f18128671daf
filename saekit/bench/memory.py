"""Peak memory of a few training steps, measured in a fresh subprocess per configuration.

The budget a sparse step should stay near: parameters + gradients + two Adam moments (4× the weights) plus
one [B, d_sae] pre-activation tensor, or one [rows, latents] tile when the fused encoder path ran
(`saekit.sae.encode_path`; the child reads the path the parent measured from its cache). A dense step adds
dense [B, d_sae] codes and gradients on top.

    python -m saekit.bench.memory variant=saekit d_sae=16384 k=32     # prints one JSON line
    row = measure_in_subprocess("saekit", StepBenchConfig())
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from saekit.bench.step import StepBenchConfig, make_dense_step, make_saekit_step

MiB = 2**20


def expected_budget_bytes(cfg: StepBenchConfig, fused: bool = False) -> int:
    """Weights + gradients + Adam (4× the weights) + the batch + one pre-activation buffer: the whole
    [B, d_sae] h on the dense path, one [rows, latents] tile on the fused path."""
    from saekit.sae.encode_path import TILING

    weights = (2 * cfg.d_in * cfg.d_sae + cfg.d_sae + cfg.d_in) * 4
    h_buffer = TILING.clamp(cfg.batch, cfg.d_sae, cfg.k) if fused else None
    h_bytes = h_buffer.rows * h_buffer.latents * 4 if h_buffer else cfg.batch * cfg.d_sae * 4
    return 4 * weights + h_bytes + cfg.batch * cfg.d_in * 4


def _peak_rss_bytes() -> int:
    """High-water RSS of this process. VmHWM belongs to the address space, so it starts afresh at exec;
    ru_maxrss does not (a child started by a big parent reports the parent's peak), so it is the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_here(variant: str, cfg: StepBenchConfig, steps: int = 2) -> dict[str, float]:
    torch.set_num_threads(2)
    _warm_up(variant, cfg)
    before = _peak_rss_bytes()
    x = torch.randn(cfg.batch, cfg.d_in)
    if variant == "dense":
        step = make_dense_step(cfg, x)
    else:
        step = make_saekit_step(cfg, x, with_aux=(variant == "saekit_auxk"))
    for _ in range(steps):
        step()
    peak = _peak_rss_bytes() - before
    from saekit.sae.encode_path import last_path

    fused = variant != "dense" and last_path() == "fused"
    budget = expected_budget_bytes(cfg, fused=fused)
    return {
        "variant": variant,
        "path": "fused" if fused else "dense",
        "peak_mib": peak / MiB,
        "budget_mib": budget / MiB,
        "peak_over_budget": peak / budget,
    }


def _warm_up(variant: str, cfg: StepBenchConfig) -> None:
    """Two steps of the same variant at a tiny width, so what any first step costs once per process (lazy
    imports, BLAS and thread-pool start-up: the budget's constant) is paid before the measurement starts."""
    import dataclasses

    tiny = dataclasses.replace(cfg, d_sae=max(256, 2 * cfg.k), batch=64)
    x = torch.randn(tiny.batch, tiny.d_in)
    if variant == "dense":
        step = make_dense_step(tiny, x)
    else:
        step = make_saekit_step(tiny, x, with_aux=(variant == "saekit_auxk"))
    for _ in range(2):
        step()


def measure_in_subprocess(variant: str, cfg: StepBenchConfig, encode_path: str = "auto") -> dict[str, float]:
    args = [f"{k}={v}" for k, v in asdict(cfg).items()]
    from saekit.sae.encode_path import ENV_VAR

    out = subprocess.run(
        [sys.executable, "-m", "saekit.bench.memory", f"variant={variant}", *args],
        capture_output=True,
        text=True,
        check=True,
        env=None if encode_path == "auto" else {**os.environ, ENV_VAR: encode_path},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> None:
    from saekit.config_io import from_dict, parse_overrides

    opts = parse_overrides(argv)
    variant = opts.pop("variant", "saekit")
    sys.stdout.write(json.dumps(measure_here(variant, from_dict(StepBenchConfig, opts))) + "\n")


if __name__ == "__main__":
    _main(sys.argv[1:])
