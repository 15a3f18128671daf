"""`saekit compare`: train every listed method on the same cache at equal mean L0, evaluate, one table.

Each method is a train YAML (configs/<method>.yaml); the comparison overrides what must be equal (cache,
hook point, k, width, token budget, batch size) and keeps each method's own settings. The methods train
together from one pass over the cache (a multi-SAE run, `saekit.train.multi`: <out_dir>/config.yaml is the
group, <out_dir>/<method>/ each run), so the cache is read once, not once per method; a method whose other
settings (seed, Adam, schedule, ...) differ from the first one's trains on its own. Every run is resumable,
so an interrupted comparison continues; finished runs are only re-evaluated when asked.

    saekit compare configs/compare.yaml total_tokens=100000
    table = run_compare(load_config(CompareConfig, "configs/compare.yaml"))   # also writes compare.json
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from saekit.config import CompareConfig, EvalConfig, TrainConfig, load_config, to_dict
from saekit.config_train import SaeMember
from saekit.errors import ConfigError, SaekitError
from saekit.io import atomic_write_json
from saekit.rundir import RunDir
from saekit.runs import median_tokens_per_s
from saekit.sae import get_method

logger = logging.getLogger(__name__)


def method_config(cfg: CompareConfig, path: str) -> TrainConfig:
    """The method's own YAML with the shared settings forced equal. The key that sets a method's mean L0
    comes from its declaration (`Method.l0_param`: k, MP's steps, JumpReLU's target_l0)."""
    name = Path(path).stem
    base = load_config(TrainConfig, path)
    overrides: dict[str, Any] = {"expansion_factor": cfg.expansion_factor, "dead_tokens": cfg.dead_tokens}
    l0_param = get_method(base.sae.method).l0_param
    if l0_param is not None:
        overrides[l0_param] = cfg.k
    if cfg.threshold_ema is not None and base.sae.param("threshold_ema") is not None:
        overrides["threshold_ema"] = cfg.threshold_ema
    if base.sae.param("k_levels") is not None:
        overrides["k_levels"] = (cfg.k,)
    if base.sae.param("prefixes") is not None:
        overrides["prefixes"] = None  # fixed widths would not fit another expansion factor
    sae = base.sae.replace(**overrides)
    return replace(
        base,
        sae=sae,
        cache_dir=cfg.cache_dir,
        hookpoint=cfg.hookpoint,
        run_dir=str(Path(cfg.out_dir) / name),
        total_tokens=cfg.total_tokens,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        live=None,
    )


def run_compare(cfg: CompareConfig) -> str:
    from saekit.activations import open_cache
    from saekit.eval import evaluate_run
    from saekit.eval.memo import ForwardMemo

    if not cfg.methods:
        raise ConfigError("methods: list at least one train YAML, e.g. [configs/topk.yaml]")
    has_grads = open_cache(cfg.cache_dir, cfg.hookpoint).has_grads
    configs = {path: method_config(cfg, path) for path in cfg.methods}
    trainable = [c for c in configs.values() if has_grads or not get_method(c.sae.method).needs_grads]
    train_pending(cfg, [c for c in trainable if not RunDir(c.run_dir).is_finished()])
    rows: list[dict[str, Any]] = []
    memo = ForwardMemo()  # one model load and one set of clean/ablation forwards for every method
    for path, train_cfg in configs.items():
        name = Path(path).stem
        if train_cfg not in trainable:
            logger.warning("skipping %s: the cache has no gradients (collect with capture_grads=true)", name)
            rows.append({"method": name, "skipped": "cache has no gradients"})
            continue
        run_dir = RunDir(train_cfg.run_dir).path
        result = _cached_eval(run_dir) if not cfg.reevaluate else None
        if result is None:
            result = evaluate_run(run_dir, EvalConfig(num_sequences=cfg.eval_sequences), memo=memo)
        rows.append(_row(name, train_cfg, result, run_dir))
    _add_step_ratios(rows)
    out = Path(cfg.out_dir) / "compare.json"
    atomic_write_json(out, {"settings": _settings(cfg), "rows": rows})
    return format_compare_table(rows) + f"\n\nwritten: {out}"


def train_pending(cfg: CompareConfig, pending: list[TrainConfig]) -> None:
    """Train the unfinished methods: together from one stream where their settings allow, else alone.

    A group starts when none of them has begun, and resumes when exactly the group saved in
    <out_dir>/config.yaml is pending; any other mix (e.g. runs of an older, one-by-one comparison) goes
    on one run at a time."""
    from saekit.train import train

    group = _group_config(cfg, [c for c in pending if _shares_stream(c, pending[0])]) if pending else None
    together = list(group.members) if group is not None else []
    runs = [RunDir(Path(cfg.out_dir) / m.name) for m in together]
    if group is not None and not any(r.has_training() for r in runs):
        logger.info("compare: training %d methods from one pass over the cache", len(together))
        train(group)
    elif group is not None and all(r.has_training() for r in runs) and _saved_members(cfg) == together:
        train(group, resume=True)
    else:
        together = []
    names = {m.name for m in together}
    for train_cfg in pending:
        if Path(train_cfg.run_dir).name not in names:
            logger.info("compare: training %s", Path(train_cfg.run_dir).name)
            train(train_cfg, resume=RunDir(train_cfg.run_dir).has_training())


def _group_config(cfg: CompareConfig, configs: list[TrainConfig]) -> TrainConfig | None:
    if len(configs) < 2:
        return None
    members = tuple(
        SaeMember(name=Path(c.run_dir).name, sae=c.sae, hookpoint=c.hookpoint, lr=c.lr) for c in configs
    )
    return replace(configs[0], run_dir=cfg.out_dir, saes=members)


_MEMBER_KEYS = ("sae", "lr", "run_dir", "hookpoint")
"""What may differ between methods trained from one stream (everything else is the stream's or the loop's)."""


def _shares_stream(a: TrainConfig, b: TrainConfig) -> bool:
    strip = lambda c: {k: v for k, v in to_dict(c).items() if k not in _MEMBER_KEYS}
    return strip(a) == strip(b)


def _saved_members(cfg: CompareConfig) -> list[SaeMember] | None:
    group = RunDir(cfg.out_dir)
    try:
        return list(group.load_config().members) if group.config_path.is_file() else None
    except SaekitError:  # an unreadable group config: the runs go on one at a time
        return None


def _cached_eval(run_dir: Path) -> dict[str, Any] | None:
    """eval.json when it is newer than the weights it describes (an earlier comparison evaluated them)."""
    run = RunDir(run_dir)
    path, weights = run.eval_path, run.final_dir / "sae.safetensors"
    if path.is_file() and weights.is_file() and path.stat().st_mtime >= weights.stat().st_mtime:
        logger.info("compare: reusing %s", path)
        return json.loads(path.read_text())
    return None


def _row(name: str, train_cfg: TrainConfig, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    heldout, splice = result.get("heldout", {}), result.get("splice", {})
    recovered = splice.get("ce_recovered", {})
    row = {
        "method": name,
        "sae_method": train_cfg.sae.method,
        "run_dir": str(run_dir),
        "l0": heldout.get("l0_mean"),
        "fvu": heldout.get("fvu"),
        "fvu_cached": result.get("cached", {}).get("fvu"),
        "dead": heldout.get("dead_fraction"),
        "dense": heldout.get("dense_fraction"),
        "ce_recovered": recovered.get("zero_ablation"),
        "ce_recovered_mean_abl": recovered.get("mean_ablation"),
        "kl": (splice.get("kl") or {}).get("sae"),
        "tokens_per_s": median_tokens_per_s(run_dir),
        "levels": result.get("levels"),
    }
    grad_mode = (result.get("selection_modes") or {}).get("grad")
    if grad_mode:  # g-SAE: the top-level numbers are plain selection; add the gradient-selected ones
        row["fvu_grad"] = (grad_mode.get("heldout") or {}).get("fvu")
        row["ce_recovered_grad"] = ((grad_mode.get("splice") or {}).get("ce_recovered") or {}).get(
            "zero_ablation"
        )
    return row


def _add_step_ratios(rows: list[dict[str, Any]]) -> None:
    """Step time relative to TopK, from the training throughput logged in the same comparison."""
    base = next(
        (r.get("tokens_per_s") for r in rows if r.get("sae_method") == "topk"),
        None,
    )
    for row in rows:
        tps = row.get("tokens_per_s")
        row["step_time_vs_topk"] = base / tps if base and tps else None


def _settings(cfg: CompareConfig) -> dict[str, Any]:
    from saekit.config import to_dict

    return to_dict(cfg)


def format_compare_table(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("method", "{}", 20),
        ("l0", "{:.1f}", 6),
        ("fvu", "{:.4f}", 7),
        ("dead", "{:.2%}", 7),
        ("dense", "{:.2%}", 7),
        ("ce_recovered", "{:.4f}", 12),
        ("kl", "{:.4f}", 7),
        ("step_time_vs_topk", "{:.2f}x", 9),
    ]
    header = " ".join(f"{name[:width]:>{width}}" for name, _, width in cols)
    lines = [header, "-" * len(header)]
    for row in rows:
        if "skipped" in row:
            lines.append(f"{row['method']:>20} skipped: {row['skipped']}")
            continue
        cells = []
        for name, fmt, width in cols:
            value = row.get(name)
            text = fmt.format(value) if value is not None else "-"
            cells.append(f"{text:>{width}}")
        lines.append(" ".join(cells))
        if row.get("levels"):
            lines.append(f"{'':>20} levels: {_levels_text(row['levels'])}")
    return "\n".join(lines)


def _levels_text(levels: Any) -> str:
    return json.dumps(levels, default=str)[:200]
