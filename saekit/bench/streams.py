"""`saekit bench mode=streams`: N SAEs trained from one cache stream against the same N trained as separate
runs, measured in one process on one synthetic cache.

Both sides run the real `saekit train` (cache reader, training step, final/ written; no checkpoints) for one
epoch over the same cache, with the same N SAE configs. Reported: wall time, SAE-tokens/s (N × tokens /
wall) and the bytes read from the cache per SAE, measured as the growth of the process's `rchar` (bytes
returned by read calls, page cache included) in /proc/self/io, so "read once for all" is measured, not
assumed. Each run also reads its normalisation sample (norm_estimation_tokens rows) once per hook point; an
untimed warm-up run first pays the lazy imports.

    saekit bench mode=streams saes=4 d_in=768 d_sae=4096 k=32 batch=1024 tokens=32768
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from saekit.activations import CacheWriter
from saekit.config import BenchConfig, SaeConfig, TrainConfig
from saekit.config_train import SaeMember
from saekit.sae import get_method
from saekit.train import train

logger = logging.getLogger(__name__)

HOOK = "synthetic.hook"


def run_streams_bench(cfg: BenchConfig) -> str:
    torch.set_num_threads(cfg.threads)
    n, d_sae, k = cfg.saes, cfg.d_sae[0], cfg.k[0]
    with tempfile.TemporaryDirectory(prefix="saekit-bench-streams-") as tmp:
        root = Path(tmp)
        shards = write_synthetic_cache(
            root / "cache" / HOOK, cfg.d_in, cfg.tokens, shard_tokens=cfg.tokens // 8
        )
        base = bench_train_config(cfg, root, d_sae, k)
        members = tuple(SaeMember(name=f"sae{i}", sae=base.sae) for i in range(n))
        # untimed warm-up: lazy imports and first-call costs must not count against the first side
        train(dataclasses.replace(base, run_dir=str(root / "warmup"), total_tokens=cfg.batch))
        separate = _measure(
            lambda: [train(dataclasses.replace(base, run_dir=str(root / f"alone{i}"))) for i in range(n)]
        )
        shared = _measure(lambda: train(dataclasses.replace(base, run_dir=str(root / "group"), saes=members)))
    cache_mib = cfg.tokens * cfg.d_in * 4 / 2**20
    lines = [
        f"saekit bench mode=streams: {n} SAEs ({cfg.method}, d_in={cfg.d_in}, d_sae={d_sae}, k={k}), batch "
        f"{cfg.batch}, one epoch of a {cfg.tokens}-row fp32 cache ({cache_mib:.0f} MiB, {shards} shards), "
        f"threads={torch.get_num_threads()}; one measurement each, separate runs first",
        f"{'':<24} {'wall s':>8} {'SAE-tokens/s':>13} {'cache MiB read per SAE':>23}",
    ]
    for label, (wall, read) in ((f"{n} separate runs", separate), (f"one stream, {n} SAEs", shared)):
        per_sae = f"{read / n / 2**20:23.1f}" if read is not None else f"{'n/a':>23}"
        lines.append(f"{label:<24} {wall:8.2f} {n * cfg.tokens / wall:13.0f} {per_sae}")
    ratio = separate[0] / shared[0]
    reads = (
        f"; cache bytes read per SAE: {shared[1] / separate[1]:.2f}x of separate runs (1/{n} = {1 / n:.2f} "
        "expected from reading each window once)"
        if separate[1] and shared[1] is not None
        else ""
    )
    lines.append(f"one stream is {ratio:.2f}x the throughput of separate runs{reads}")
    return "\n".join(lines)


def bench_train_config(
    cfg: BenchConfig, root: Path, d_sae: int, k: int, *, min_steps: int = 1, log_windows: int = 1
) -> TrainConfig:
    """One epoch over the synthetic cache in `root/cache` (at least `min_steps` steps), logged in
    `log_windows` windows; shared by the streams and ranks modes."""
    l0_key = get_method(cfg.method).l0_param
    sae = SaeConfig.make(cfg.method, d_sae=d_sae, **({l0_key: k} if l0_key else {}))
    steps = max(min_steps, cfg.tokens // cfg.batch)
    return TrainConfig(
        sae=sae,
        cache_dir=str(root / "cache"),
        run_dir=str(root / "unused"),
        total_tokens=steps * cfg.batch,
        batch_size=cfg.batch,
        norm_estimation_tokens=min(cfg.tokens, 8192),
        shuffle_buffer_tokens=cfg.tokens // 4,
        log_every=max(1, steps // log_windows),
        checkpoint_every=steps,  # none: a checkpoint is only written before the last step
        progress=False,
    )


def _measure(work: Callable[[], object]) -> tuple[float, int | None]:
    """(wall seconds, bytes read by the process meanwhile, or None where /proc/self/io is missing)."""
    before = _bytes_read()
    start = time.perf_counter()
    work()
    wall = time.perf_counter() - start
    after = _bytes_read()
    return wall, (after - before) if before is not None and after is not None else None


def _bytes_read() -> int | None:
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return int(fields["rchar"]) if "rchar" in fields else None


def write_synthetic_cache(directory: Path, d_in: int, tokens: int, *, shard_tokens: int) -> int:
    """A one-hook fp32 cache of Gaussian rows with a few strong directions; returns its shard count."""
    generator = torch.Generator().manual_seed(0)
    header = {
        "model_id": "synthetic",
        "hookpoint": HOOK,
        "d_in": d_in,
        "dtype": "float32",
        "context_length": 128,
        "tokenizer_fingerprint": "synthetic",
        "corpus_fingerprint": "synthetic",
        "collect_config": {},
        "shard_tokens": max(1, shard_tokens),
        "has_grads": False,
        "first_sequence": 0,
    }
    writer = CacheWriter.create(directory, header)
    directions = torch.randn(64, d_in, generator=generator)
    for start in range(0, tokens, 8192):
        rows = min(8192, tokens - start)
        codes = torch.rand(rows, 64, generator=generator).pow(8)  # sparse-ish non-negative mixtures
        acts = codes @ directions + 0.1 * torch.randn(rows, d_in, generator=generator)
        ids = torch.arange(start, start + rows)
        writer.add(acts, ids % 50_000, ids // 128, ids % 128)
    writer.finish(num_sequences=tokens // 128 + 1, next_sequence=tokens // 128 + 1, excluded={})
    return len(writer.manifest["shards"])
