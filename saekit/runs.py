"""Discovery of training runs under a RUNS_DIR, and read-only loaders for what each run wrote.

A run is a directory holding `config.yaml` (written by `saekit train`) and an SAE checkpoint (`final/`,
or a checkpoint's `sae/` while training is unfinished); its layout belongs to `saekit.rundir`. Runs may be
nested (`runs/demo/topk`). The app and notebooks read runs only through this module and `saekit.analysis`.

    runs = list_runs("runs")                          # [RunInfo(name="demo/topk", ...)], sorted by name
    rows = runs_table(runs)                           # one summary dict per run (method, FVU, L0, ...)
    curves = load_metrics(runs[0].path)               # metrics.jsonl as a list of dicts
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.errors import RunDirError
from saekit.rundir import RUN_SUBDIRS, RunDir

logger = logging.getLogger(__name__)

MAX_DEPTH = 4
"""How deep below RUNS_DIR to look for runs (runs/<group>/<name> is depth 2)."""
_NOT_RUNS = RUN_SUBDIRS | {"cache", "__pycache__"}
"""Sub-directories of a run (or caches) that never hold another run; skipping them keeps discovery fast."""


@dataclass
class RunInfo:
    """What a run directory holds. `error` is set (and `config` empty) when config.yaml is unreadable."""

    name: str
    """Path relative to RUNS_DIR ('.' when RUNS_DIR is itself a run)."""
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    """True when `final/` exists (training completed)."""
    has_eval: bool = False
    has_index: bool = False
    has_metrics: bool = False
    error: str | None = None


def list_runs(runs_dir: str | Path) -> list[RunInfo]:
    """Every run under `runs_dir` (or `runs_dir` itself if it is a run), sorted by name.

    A run whose config.yaml cannot be parsed is still listed, with `error` saying why, so one broken run
    never hides the others.
    """
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        raise RunDirError(
            f"runs directory {root} does not exist; pass the directory your runs live in "
            "(e.g. `saekit app runs`), or train one with `saekit train CONFIG.yaml run_dir=runs/NAME`"
        )
    found = [_run_info(root, p) for p in sorted(_candidate_dirs(root, 0))]
    if not found:
        raise RunDirError(
            f"no runs under {root}: a run is a directory with config.yaml and final/ (written by "
            "`saekit train`); train one with `saekit train CONFIG.yaml run_dir="
            f"{root / 'NAME'}` or point at another directory"
        )
    return found


def _candidate_dirs(directory: Path, depth: int, root: Path | None = None) -> list[Path]:
    """Run directories below `directory`. Symlinks that lead outside the root are not followed, and a
    directory that cannot be read (e.g. under /proc) is skipped, so discovery never leaves the root."""
    root = root or directory.resolve()
    try:
        if _is_run(directory):
            return [directory]  # a run's own sub-directories are its checkpoints, never other runs
        children = sorted(directory.iterdir()) if depth < MAX_DEPTH else []
    except OSError as err:
        logger.debug("skipping %s: %s", directory, err)
        return []
    out: list[Path] = []
    for child in children:
        if child.name.startswith(".") or child.name in _NOT_RUNS:
            continue
        try:
            inside = child.is_dir() and child.resolve().is_relative_to(root)
        except OSError:
            continue
        if inside:
            out += _candidate_dirs(child, depth + 1, root)
    return out


def _is_run(directory: Path) -> bool:
    return RunDir(directory).is_run()


def _run_info(root: Path, path: Path) -> RunInfo:
    from saekit.analysis.format import META_FILE

    run = RunDir(path)
    name = str(path.relative_to(root)) if path != root else "."
    info = RunInfo(
        name=name,
        path=path,
        finished=run.is_finished(),
        has_eval=run.eval_path.is_file(),
        has_index=(run.index_dir / META_FILE).is_file(),
        has_metrics=run.metrics_path.is_file(),
    )
    try:
        info.config = load_run_config(path)
    except Exception as err:  # any parse/validation problem: show it on the run, keep listing the rest
        info.error = f"{type(err).__name__}: {err}"
        logger.warning("run %s: %s", path, info.error)
    return info


# ---------------------------------------------------------------------------------------- per-run files


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's resolved training config (validated through `TrainConfig`) as a plain dict."""
    from saekit.config import to_dict

    return to_dict(RunDir(run_dir).load_config())


def load_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl as a list of rows ([] when the run logged nothing yet).

    A line that does not parse is skipped with a warning: the trainer may be appending to it right now.
    """
    path = RunDir(run_dir).metrics_path
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s line %d is not JSON (still being written?); skipped", path, number)
    return rows


def load_eval(run_dir: str | Path) -> dict[str, Any] | None:
    """eval.json, or None when the run has not been evaluated (`saekit eval RUN` writes it)."""
    path = RunDir(run_dir).eval_path
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path} is not valid JSON ({err}); re-run `saekit eval {run_dir}`") from None


def median_tokens_per_s(run_dir: str | Path) -> float | None:
    """Median logged training throughput, leaving out the first window (start-up) when there are more."""
    rates = [row["tokens_per_s"] for row in load_metrics(run_dir) if "tokens_per_s" in row]
    rates = rates[1:] or rates
    return sorted(rates)[len(rates) // 2] if rates else None


def latest_trainer_state(run_dir: str | Path) -> dict[str, Any] | None:
    """trainer_state.json of the finished run (final/) or else of the newest checkpoint, or None."""
    return RunDir(run_dir).trainer_state()


# ---------------------------------------------------------------------------------------- summaries


def method_name(config: dict[str, Any]) -> str:
    """A short method label: the method, with its selection rule when it has one (e.g. matryoshka)."""
    sae = config.get("sae") or {}
    method = sae.get("method", "?")
    rule = (sae.get("params") or {}).get("activation")
    return f"{method} ({rule})" if rule else method


def eval_headline(result: dict[str, Any] | None) -> dict[str, Any]:
    """FVU, L0, dead fraction (held-out, else cached rows) and CE recovered from an eval.json dict."""
    if not result:
        return {"fvu": None, "l0": None, "dead_fraction": None, "ce_recovered": None, "kl": None}
    part = result.get("heldout") or result.get("cached") or {}
    splice = result.get("splice") or {}
    return {
        "fvu": part.get("fvu"),
        "l0": part.get("l0_mean"),
        "dead_fraction": part.get("dead_fraction"),
        "ce_recovered": (splice.get("ce_recovered") or {}).get("zero_ablation"),
        "kl": (splice.get("kl") or {}).get("sae"),
    }


def runs_table(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """One row per run: name, method, d_sae, k, tokens trained, FVU, L0, dead %, CE recovered, status."""
    rows = []
    for run in runs:
        cfg, result = run.config, None
        if run.has_eval:
            try:
                result = load_eval(run.path)
            except RunDirError as err:
                logger.warning("%s", err)
        head = eval_headline(result)
        sae = cfg.get("sae") or {}
        d_sae = ((result or {}).get("sae") or {}).get("d_sae") or sae.get("d_sae")
        dead = head["dead_fraction"]
        rows.append(
            {
                "name": run.name,
                "method": method_name(cfg) if cfg else "?",
                "d_sae": d_sae,
                "k": (sae.get("params") or {}).get("k"),
                "tokens": cfg.get("total_tokens"),
                "FVU": head["fvu"],
                "L0": head["l0"],
                "dead %": None if dead is None else 100.0 * dead,
                "CE recovered": head["ce_recovered"],
                "status": _status(run),
            }
        )
    return rows


def _status(run: RunInfo) -> str:
    if run.error:
        return "broken config"
    parts = ["finished" if run.finished else "training"]
    parts += [] if run.has_eval else ["no eval"]
    parts += [] if run.has_index else ["no index"]
    return ", ".join(parts)


_RECON_ROWS = (
    ("FVU", "fvu", 1.0),
    ("explained variance (1 - FVU)", "explained_variance", 1.0),
    ("L0 (mean active latents)", "l0_mean", 1.0),
    ("dead latents %", "dead_fraction", 100.0),
    ("dense latents %", "dense_fraction", 100.0),
    ("cosine similarity", "cosine_similarity", 1.0),
    ("L2 ratio", "l2_ratio", 1.0),
    ("relative reconstruction bias", "relative_reconstruction_bias", 1.0),
)


def eval_table_rows(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """eval.json as table rows {metric, cached, heldout}: reconstruction metrics on both row sets, then
    the spliced CE / KL numbers (held-out text only). The same content as `format_eval_table`."""
    if not result:
        return []
    cached, heldout = result.get("cached") or {}, result.get("heldout") or {}
    scaled = lambda d, key, f: None if d.get(key) is None else d[key] * f
    rows = [
        {"metric": label, "cached": scaled(cached, key, f), "heldout": scaled(heldout, key, f)}
        for label, key, f in _RECON_ROWS
    ]
    splice = result.get("splice") or {}
    for group, label in (
        ("ce_loss", "CE"),
        ("ce_recovered", "CE recovered"),
        ("kl", "KL"),
        ("kl_score", "KL score"),
    ):
        for key, value in (splice.get(group) or {}).items():
            rows.append({"metric": f"{label} ({key.replace('_', ' ')})", "cached": None, "heldout": value})
    return rows


LEVEL_KEYS = ("levels", "per_level", "per_prefix", "prefixes", "per_k")
"""Keys under which eval.json may hold per-prefix (Matryoshka) or per-k (multi/hierarchical) metrics."""


def eval_levels(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-prefix / per-k rows from eval.json when present (else []), one dict per level with `level`,
    `kind` ("prefix" or "k" when known) and that level's metrics (e.g. fvu, l0).

    Reads what `saekit eval` writes — `levels: {kind, widths | k, fvu: [...], l0: [...]}`, one list per
    metric — and, for older or hand-made files, a list of per-level dicts or a {level: metrics} mapping,
    at the top level or under `heldout`/`cached`.
    """
    if not result:
        return []
    for holder in (result, result.get("heldout") or {}, result.get("cached") or {}):
        for key in LEVEL_KEYS:
            rows = _level_rows(holder.get(key))
            if rows:
                return rows
    return []


def _level_rows(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict) and any(isinstance(value.get(k), list) for k in _LEVEL_AXES):
        return _columns_to_rows(value)
    if isinstance(value, dict) and isinstance(value.get("rows"), list):
        value = value["rows"]  # a {"kind": ..., "rows": [...]} wrapper
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [{"level": v.get("level", v.get("k", v.get("prefix", i))), **v} for i, v in enumerate(value)]
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [{"level": _maybe_int(k), **v} for k, v in value.items()]
    return []


_LEVEL_AXES = ("widths", "k", "levels", "prefixes")
"""Names of the level axis in the columnar layout (Matryoshka prefix widths, or k values)."""


def _columns_to_rows(value: dict[str, Any]) -> list[dict[str, Any]]:
    axis = next(k for k in _LEVEL_AXES if isinstance(value.get(k), list))
    levels = value[axis]
    kind = value.get("kind") or ("prefix" if axis in ("widths", "prefixes") else "k")
    columns = {
        name: column
        for name, column in value.items()
        if name != axis and isinstance(column, list) and len(column) == len(levels)
    }
    return [
        {"level": level, "kind": kind, **{name: column[i] for name, column in columns.items()}}
        for i, level in enumerate(levels)
    ]


def _maybe_int(key: Any) -> Any:
    try:
        return int(key)
    except (TypeError, ValueError):
        return key


# ---------------------------------------------------------------------------------------- model + SAE


def run_model_name(run_dir: str | Path) -> str:
    """The name `load_model` takes for the run's model: as recorded by collection (cache manifest) or
    the live config, the same way `saekit eval` chooses it; falls back to the SAE's recorded model id."""
    from saekit.config import EvalConfig
    from saekit.eval.evaluate import plan_heldout

    run_dir = Path(run_dir)
    train_cfg = RunDir(run_dir).load_config()
    try:
        manifest = None
        if train_cfg.cache_dir is not None:
            from saekit.activations import open_cache

            manifest = open_cache(train_cfg.cache_dir, train_cfg.hookpoint).manifest
        return plan_heldout(train_cfg, manifest, EvalConfig()).model
    except Exception as err:  # cache moved or deleted: the SAE's own record is the next best source
        cfg = json.loads((RunDir(run_dir).sae_dir() / "cfg.json").read_text())
        name = cfg.get("model_id") or cfg.get("model")
        if not name:
            raise RunDirError(
                f"cannot tell which model {run_dir} was trained on ({err}); restore its activation cache "
                "or record model_id in the SAE's cfg.json"
            ) from err
        logger.warning("run %s: using the SAE's model id %r (%s)", run_dir, name, err)
        return "embedded" if str(name).startswith("embedded:") else str(name)


def load_run_sae(run_dir: str | Path) -> Any:
    """The run's SAE (final/, else the newest checkpoint) in inference mode."""
    return RunDir(run_dir).load_sae().eval()


def load_run_model(run_dir: str | Path) -> Any:
    """The model the run's SAE reads, loaded by the name collection recorded."""
    from saekit.models import load_model

    return load_model(run_model_name(run_dir))
