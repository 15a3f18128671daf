"""The end-to-end demo behind `make demo` / `saekit demo`: collect → train → evaluate on the embedded model.

Every stage is resumable, so re-running after an interruption continues where it stopped, and re-running a
finished demo only re-evaluates.

    summary = run_demo(DemoConfig(tokens=50_000))
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from saekit.config import CollectConfig, DemoConfig, EvalConfig, SaeConfig, TrainConfig
from saekit.io import atomic_write_json
from saekit.rundir import RunDir

logger = logging.getLogger(__name__)


def demo_configs(cfg: DemoConfig) -> tuple[CollectConfig, TrainConfig, EvalConfig]:
    out = Path(cfg.out_dir)
    collect = CollectConfig(
        model=cfg.model,
        hookpoints=(cfg.hookpoint,),
        corpus=cfg.corpus,
        context_length=cfg.context_length,
        max_tokens=cfg.tokens,
        batch_size=cfg.collect_batch_size,
        out_dir=str(out / "cache"),
        autocast_bf16=cfg.autocast_bf16,
    )
    sae = SaeConfig.make("topk", k=cfg.k, expansion_factor=cfg.expansion_factor, dead_tokens=cfg.dead_tokens)
    train = TrainConfig(
        sae=sae,
        cache_dir=collect.out_dir,
        hookpoint=cfg.hookpoint,
        run_dir=str(out / "topk"),
        total_tokens=cfg.tokens * cfg.epochs,
        batch_size=cfg.batch_size,
        log_every=10,
        checkpoint_every=50,
    )
    evaluation = EvalConfig(num_sequences=cfg.eval_sequences)
    return collect, train, evaluation


def run_demo(cfg: DemoConfig) -> str:
    """Run the three stages and return a printable summary (also written to <out_dir>/summary.json)."""
    from saekit.activations import collect
    from saekit.eval import evaluate_run, format_eval_table
    from saekit.runs import median_tokens_per_s
    from saekit.train import train

    collect_cfg, train_cfg, eval_cfg = demo_configs(cfg)
    start = time.perf_counter()
    collect(collect_cfg)
    collected = time.perf_counter()
    run = RunDir(train_cfg.run_dir)
    run_dir = run.path
    if run.is_finished():
        logger.info("%s is already trained; re-evaluating only", run_dir)
    else:
        train(train_cfg, resume=run.has_training())
    trained = time.perf_counter()
    result = evaluate_run(run_dir, eval_cfg)
    done = time.perf_counter()
    timings = {
        "collect_s": collected - start,
        "train_s": trained - collected,
        "eval_s": done - trained,
        "total_s": done - start,
        "train_tokens_per_s": median_tokens_per_s(run_dir) or float("nan"),
    }
    summary = {"timings": timings, "run_dir": str(run_dir), "cache_dir": collect_cfg.out_dir, "eval": result}
    atomic_write_json(Path(cfg.out_dir) / "summary.json", summary)
    lines = [
        format_eval_table(result),
        "",
        f"wall time: {timings['total_s']:.0f} s (collect {timings['collect_s']:.0f} s, train "
        f"{timings['train_s']:.0f} s, eval {timings['eval_s']:.0f} s)",
        f"training throughput: {timings['train_tokens_per_s']:.0f} tokens/s (median of logged windows)",
        f"activation cache: {collect_cfg.out_dir}",
        f"run directory:    {run_dir}  (final/, metrics.jsonl, eval.json)",
    ]
    return "\n".join(lines)
