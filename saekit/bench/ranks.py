"""`saekit bench mode=ranks`: training tokens/s of one process against `torchrun` data parallelism.

The same `saekit train` config (a synthetic cache, one epoch, the global batch `batch`) runs as one process
and under `torchrun --standalone --nproc-per-node N` for N = 2 … `ranks`, each in a fresh subprocess. The
`threads` budget is split between the ranks (OMP_NUM_THREADS = threads // N), so the comparison is at equal
CPU. Reported per world size: the wall time of the whole command (start-up included) and the steady-state
tokens/s from metrics.jsonl (the mean of `tokens_per_s` over the log windows after the first, which holds
the warm-up; rank 0's clock, global batch).

    saekit bench mode=ranks d_sae=4096 k=32 batch=1024 tokens=65536 ranks=2
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from saekit.bench.streams import HOOK, bench_train_config, write_synthetic_cache
from saekit.config import BenchConfig, TrainConfig, save_config


def run_ranks_bench(cfg: BenchConfig) -> str:
    d_sae, k = cfg.d_sae[0], cfg.k[0]
    worlds = [1, *range(2, cfg.ranks + 1)]
    with tempfile.TemporaryDirectory(prefix="saekit-bench-ranks-") as tmp:
        root = Path(tmp)
        write_synthetic_cache(root / "cache" / HOOK, cfg.d_in, cfg.tokens, shard_tokens=cfg.tokens // 8)
        base = bench_train_config(cfg, root, d_sae, k, min_steps=4, log_windows=4)
        results = {world: _run(base, root, world, cfg.threads) for world in worlds}
    lines = [
        f"saekit bench mode=ranks: {cfg.method} d_in={cfg.d_in} d_sae={d_sae} k={k}, global batch "
        f"{cfg.batch}, one epoch of a {cfg.tokens}-row synthetic cache, {cfg.threads} threads split between "
        "the ranks (gloo); one measurement each",
        f"{'ranks':>5} {'threads/rank':>12} {'wall s':>8} {'tokens/s':>10} {'vs 1 rank':>10}",
    ]
    single = results[1][1]
    for world, (wall, rate) in results.items():
        threads = max(1, cfg.threads // world)
        lines.append(f"{world:>5} {threads:>12} {wall:8.1f} {rate:10.0f} {rate / single:9.2f}x")
    lines.append(
        "tokens/s: steady state from metrics.jsonl (log windows after the first); wall: the whole command, "
        "process start-up and torch imports included"
    )
    return "\n".join(lines)


def _run(base: TrainConfig, root: Path, world: int, threads: int) -> tuple[float, float]:
    """(wall seconds, steady-state tokens/s) of one `saekit train` with `world` ranks."""
    run_dir = root / f"ranks{world}"
    config = root / f"ranks{world}.yaml"
    save_config(dataclasses.replace(base, run_dir=str(run_dir)), config)
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)] if world > 1 else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // world))}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *launcher, "-m", "saekit", "train", str(config)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"`saekit train` with {world} rank(s) failed: {done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows
    return wall, sum(r["tokens_per_s"] for r in steady) / len(steady)
