"""A run at a glance: its defining settings as display strings, and Pareto frontiers across runs.

Both serve the app's Overview and Compare pages and notebooks; they read runs through `saekit.runs`.

    run_hyperparameters(run)           # {"method": "topk", "k": "32", "d_sae": "4,608", "lr": ..., ...}
    pareto_front(points, "L0", "FVU")  # the non-dominated points, by L0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saekit.analysis.render import number
from saekit.errors import RunDirError
from saekit.rundir import RunDir
from saekit.runs import RunInfo, load_metrics, method_name


def run_hyperparameters(run: RunInfo) -> dict[str, str]:
    """The settings that define a run, as display strings, leaving out what is unknown (never 'None'):
    method, every set method parameter (k, aux_coef, ...), d_sae, d_in, learning rate (the logged one
    when the config chose it automatically), tokens, batch size, hook point, model. Reads the config, the
    SAE's cfg.json and the first metrics row; an imported SAE without a training log still gets its own."""
    cfg, out = run.config or {}, {}
    sae_cfg = _sae_cfg(run.path)
    sae = cfg.get("sae") or sae_cfg.get("sae") or {}
    out["method"] = method_name({"sae": sae}) if sae else str(sae_cfg.get("method") or "?")
    for key, value in (sae.get("params") or {}).items():
        if value is not None and not isinstance(value, (dict, list)):
            out[key] = number(value) if isinstance(value, (int, float)) else str(value)
    for key in ("d_sae", "d_in"):
        value = sae_cfg.get(key) or (sae.get(key) if key == "d_sae" else None)
        if value:
            out[key] = number(int(value))
    lr = cfg.get("lr")
    logged = next((row["lr"] for row in load_metrics(run.path)[:1] if row.get("lr") is not None), None)
    if lr is not None:
        out["lr"] = number(lr, 3)
    elif logged is not None:
        out["lr"] = f"{number(logged, 3)} (auto)"
    if cfg.get("total_tokens"):
        out["tokens"] = number(int(cfg["total_tokens"]))
    if cfg.get("batch_size"):
        out["batch size"] = number(int(cfg["batch_size"]))
    hook = cfg.get("hookpoint") or sae_cfg.get("hookpoint")
    if hook:
        out["hook point"] = str(hook)
    if sae_cfg.get("model_id"):
        out["model"] = str(sae_cfg["model_id"])
    return out


def _sae_cfg(run_dir: Path) -> dict[str, Any]:
    """The SAE's cfg.json ({} when the run has no readable SAE yet)."""
    try:
        return json.loads((RunDir(run_dir).sae_dir() / "cfg.json").read_text())
    except (RunDirError, OSError, json.JSONDecodeError):
        return {}


def pareto_front(
    points: list[dict[str, Any]], x: str, y: str, *, higher_is_better: bool = False
) -> list[dict[str, Any]]:
    """The points no other point beats on both axes (smaller `x`; smaller or, with `higher_is_better`,
    larger `y`), sorted by `x`: the frontier line of one method on a sparsity/fidelity plot."""
    kept = sorted((p for p in points if p.get(x) is not None and p.get(y) is not None), key=lambda p: p[x])
    sign = -1.0 if higher_is_better else 1.0
    front: list[dict[str, Any]] = []
    for point in kept:
        if not front or sign * point[y] < sign * front[-1][y]:
            front.append(point)
    return front
