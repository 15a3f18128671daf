"""`saekit study`: train every (method, k, seed) of a Pareto sweep on one cache, evaluate each on held-out
text, and write study.json (runs, frontiers, claims) after every run, atomically.

Resumable: a run whose final weights exist is not retrained, and an eval.json newer than those weights is
reused, so an interrupted study continues where it stopped. Runs live in <out_dir>/<method>/k<k>_s<seed>.

    text = run_study(load_config(StudyConfig, "configs/study.yaml"))     # also writes study.json
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from saekit.compare import method_config
from saekit.config import CompareConfig, EvalConfig, TrainConfig, load_config, to_dict
from saekit.config_study import StudyConfig
from saekit.errors import ConfigError
from saekit.io import atomic_write_json
from saekit.rundir import RunDir
from saekit.sae import get_method
from saekit.study.claims import judge_claims
from saekit.study.frontier import seed_stat
from saekit.study.report import format_study

logger = logging.getLogger(__name__)

STUDY_FORMAT = 1
"""Version of study.json's layout (the app reads it)."""


def run_config(cfg: StudyConfig, path: str, k: int, seed: int) -> TrainConfig:
    """The method's own YAML with the shared settings forced equal (as `saekit compare` does), at mean L0 k,
    with this seed and its own run directory."""
    shared = CompareConfig(
        methods=(path,),
        cache_dir=cfg.cache_dir,
        hookpoint=cfg.hookpoint,
        k=k,
        expansion_factor=cfg.expansion_factor,
        total_tokens=cfg.total_tokens,
        batch_size=cfg.batch_size,
        dead_tokens=cfg.dead_tokens,
        threshold_ema=cfg.threshold_ema,
        out_dir=cfg.out_dir,
        progress=cfg.progress,
    )
    base = method_config(shared, path)
    return replace(base, seed=seed, run_dir=str(Path(cfg.out_dir) / Path(path).stem / f"k{k}_s{seed}"))


def run_study(cfg: StudyConfig) -> str:
    """Train and evaluate what is missing, judge the claims, write <out_dir>/study.json; the text report."""
    from saekit.activations import open_cache

    cache = open_cache(cfg.cache_dir, cfg.hookpoint)
    # seed-major: an interrupted study has every method at every k for the first seed(s)
    plan = [(p, k, s) for s in cfg.seeds for k in cfg.ks for p in cfg.methods]
    for path in cfg.methods:  # fail on a bad YAML before hours of training, not after
        load_config(TrainConfig, path)
    stems = [Path(p).stem for p in cfg.methods]
    if cfg.baseline not in stems:
        raise ConfigError(
            f"baseline: {cfg.baseline!r} is not one of the methods {stems}; add its YAML to methods"
        )
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    evaluator = _Evaluator(cfg, cache.manifest)
    for path, k, seed in tqdm(plan, desc="study", unit="run", disable=not cfg.progress):
        train_cfg = run_config(cfg, path, k, seed)
        name = Path(path).stem
        if get_method(train_cfg.sae.method).needs_grads and not cache.has_grads:
            if not any(s["method"] == name for s in skipped):
                logger.warning(
                    "skipping %s: the cache has no gradients (collect with capture_grads=true)", name
                )
                skipped.append({"method": name, "reason": "cache has no gradients"})
            continue
        if not cfg.train and fresh_eval(Path(train_cfg.run_dir)) is None:
            logger.info("study: %s k=%d seed=%d is not evaluated yet; left out (train=false)", name, k, seed)
            continue
        runs.append(_run_one(train_cfg, name, k, seed, evaluator))
        _write(cfg, runs, skipped)
    return format_study(_write(cfg, runs, skipped)) + f"\n\nwritten: {Path(cfg.out_dir) / 'study.json'}"


def _run_one(train_cfg: TrainConfig, name: str, k: int, seed: int, evaluator: _Evaluator) -> dict[str, Any]:
    from saekit.train import train

    run = RunDir(train_cfg.run_dir)
    if not run.is_finished():
        logger.info("study: training %s k=%d seed=%d", name, k, seed)
        train(train_cfg, resume=run.has_training())
    result = evaluator(run.path)
    return study_row(name, train_cfg, k, seed, result)


class _Evaluator:
    """Evaluates runs with one model load for the whole study (reusing fresh eval.json files)."""

    def __init__(self, cfg: StudyConfig, manifest: dict[str, Any]) -> None:
        self.cfg = cfg
        self.eval_cfg = EvalConfig(
            num_sequences=cfg.eval_sequences,
            max_eval_rows=cfg.max_eval_rows,
            calibrate=cfg.calibrate,
            save_calibration=cfg.calibrate != "none",  # the runs' index, app and export then match the study
        )
        collected = manifest.get("collect_config") or {}
        self.model_name = collected.get("model") or manifest.get("model_id")
        self.memo: Any = None
        """ForwardMemo of the loaded model: the clean/ablation forwards and held-out rows are computed
        once for the whole study, not once per run."""

    def __call__(self, run_dir: Path) -> dict[str, Any]:
        from saekit.eval import evaluate_run

        cached = None if self.cfg.reevaluate else fresh_eval(run_dir)
        if cached is not None:
            return cached
        if self.memo is None and self.model_name is not None:
            from saekit.eval.memo import ForwardMemo
            from saekit.models import load_model

            self.memo = ForwardMemo(load_model(self.model_name))
        return evaluate_run(run_dir, self.eval_cfg, memo=self.memo)


def fresh_eval(run_dir: Path) -> dict[str, Any] | None:
    """eval.json when it is newer than the weights it describes (a resumed study reuses it)."""
    run = RunDir(run_dir)
    path, weights = run.eval_path, run.final_dir / "sae.safetensors"
    if path.is_file() and weights.is_file() and path.stat().st_mtime >= weights.stat().st_mtime:
        return json.loads(path.read_text())
    return None


def study_row(name: str, train_cfg: TrainConfig, k: int, seed: int, result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one run that the study compares (held-out L0/FVU/CE; dead latents on cached rows)."""
    heldout, cached, splice = (
        result.get("heldout") or {},
        result.get("cached") or {},
        result.get("splice") or {},
    )
    row: dict[str, Any] = {
        "method": name,
        "sae_method": train_cfg.sae.method,
        "k": k,
        "seed": seed,
        "run_dir": str(train_cfg.run_dir),
        "l0": heldout.get("l0_mean"),
        "fvu": heldout.get("fvu"),
        "ce_recovered": (splice.get("ce_recovered") or {}).get("zero_ablation"),
        "l0_cached": cached.get("l0_mean"),
        "fvu_cached": cached.get("fvu"),
        "dead": cached.get("dead_fraction", heldout.get("dead_fraction")),
    }
    grad_mode = (result.get("selection_modes") or {}).get("grad")
    if grad_mode:  # g-SAE: the top-level numbers are plain selection; keep the gradient-selected CE too
        row["ce_recovered_grad"] = ((grad_mode.get("splice") or {}).get("ce_recovered") or {}).get(
            "zero_ablation"
        )
    return row


def frontiers(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per method and k: L0, FVU and CE recovered as mean ± spread over seeds (the app's error bars)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        points = []
        for k in sorted({r["k"] for r in runs if r["method"] == name}):
            group = [r for r in runs if r["method"] == name and r["k"] == k]
            point: dict[str, Any] = {"k": k}
            for metric in ("l0", "fvu", "ce_recovered", "dead"):
                stat = seed_stat(r.get(metric) for r in group)
                point[metric] = stat.as_dict() if stat is not None else None
            points.append(point)
        out[name] = points
    return out


def _write(cfg: StudyConfig, runs: list[dict[str, Any]], skipped: list[dict[str, str]]) -> dict[str, Any]:
    order = {Path(p).stem: i for i, p in enumerate(cfg.methods)}
    runs = sorted(runs, key=lambda r: (order[r["method"]], r["k"], r["seed"]))
    study = {
        "format": STUDY_FORMAT,
        "settings": to_dict(cfg),
        "runs": runs,
        "skipped": skipped,
        "frontiers": frontiers(runs),
        "claims": judge_claims(runs, baseline=cfg.baseline, ks=cfg.ks, l0s=cfg.l0_points),
    }
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(cfg.out_dir) / "study.json", study)
    return study
