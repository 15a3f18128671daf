"""`saekit bench mode=index`: what output scores add to `saekit index`, and the scan against a bare forward.

On a trained run (default `runs/demo/topk`, written by `make demo`), with the model loaded once: for each
number of held-out sequences, the whole `build_index` without output scores and with them (into a scratch
run sharing the run's final checkpoint, so the run's own index is untouched), and the bare forward of the
same sequences to the hook point at the index's batch size (what the scan cannot avoid). Rounds are
interleaved; medians are reported.

    text = run_index_bench(BenchConfig(mode="index", run="runs/demo/topk", sequences=(64, 256)))
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from saekit.config import BenchConfig
from saekit.config_index import IndexConfig
from saekit.errors import ConfigError


def run_index_bench(cfg: BenchConfig) -> str:
    from saekit.analysis.build import index_settings, open_run
    from saekit.rundir import RunDir

    torch.set_num_threads(cfg.threads)
    if not RunDir(cfg.run).is_finished():
        raise ConfigError(f"run={cfg.run} has no final/ checkpoint; `make demo` writes runs/demo/topk")
    from saekit.bench import cpu_description
    from saekit.sae.encode_path import cpu_capability

    lines = [
        f"saekit bench mode=index: run {cfg.run}, threads {torch.get_num_threads()}, reps {cfg.reps}, "
        f"cpu={cpu_description()} capability={cpu_capability()}"
    ]
    model = None
    with tempfile.TemporaryDirectory(prefix="saekit-bench-index-") as tmp:
        scratch = _scratch_run(Path(cfg.run), Path(tmp) / "run")
        for n in cfg.sequences:
            base = IndexConfig(num_sequences=n, progress=False)
            run = open_run(scratch, index_settings(base), model)
            model = run.model
            seconds, phases = _medians(_variants(scratch, base, run), cfg.reps, scratch)
            lines += _lines(n, run.tokens.numel(), seconds, phases)
    lines.append("targets (issue 13): with / without ≤ 1.5; scan ≥ 0.8 × the bare forward's tokens/s")
    return "\n".join(lines)


def _variants(scratch: Path, base: IndexConfig, run: Any) -> dict[str, Callable[[], Any]]:
    from saekit.analysis import build_index
    from saekit.models.hooks import forward_to

    def bare() -> None:
        with torch.no_grad():
            for lo in range(0, len(run.tokens), base.batch_size):
                forward_to(run.model, run.tokens[lo : lo + base.batch_size], [run.sae.hookpoint])

    return {
        "bare": bare,
        "without": lambda: build_index(scratch, base, model=run.model, compute_output_scores=False),
        "with": lambda: build_index(scratch, base, model=run.model, compute_output_scores=True),
    }


def _scratch_run(src: Path, dst: Path) -> Path:
    """A run directory sharing `src`'s final checkpoint (symlinked) with its own config and index."""
    from saekit.rundir import RunDir

    source, scratch = RunDir(src), RunDir(dst)
    dst.mkdir(parents=True)
    shutil.copy2(source.config_path, scratch.config_path)
    scratch.final_dir.symlink_to(source.final_dir.resolve(), target_is_directory=True)
    return dst


def _medians(
    fns: dict[str, Callable[[], Any]], reps: int, run: Path
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    from saekit.analysis.format import META_FILE
    from saekit.rundir import RunDir

    samples: dict[str, list[float]] = {name: [] for name in fns}
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in fns}
    fns["bare"]()  # warm-up: allocator, lazy imports
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
            if name != "bare":
                meta = RunDir(run).index_dir / META_FILE
                phases[name].append(json.loads(meta.read_text())["throughput"])
    medians = {name: statistics.median(times) for name, times in samples.items()}
    phase = {
        name: {key: statistics.median(r[key] for r in rows) for key in rows[0] if key.endswith("seconds")}
        for name, rows in phases.items()
        if rows
    }
    return medians, phase


def _lines(n: int, n_tokens: int, s: dict[str, float], phases: dict[str, dict[str, float]]) -> list[str]:
    scan = phases["without"]["scan_seconds"]
    scores = phases["with"].get("output_scores_seconds", float("nan"))
    return [
        f"  {n} sequences ({n_tokens} tokens): index without output scores {s['without']:.1f} s, with "
        f"{s['with']:.1f} s (output scores {scores:.1f} s) -> ratio {s['with'] / s['without']:.2f}",
        f"    scan {n_tokens / scan:.0f} tok/s vs bare forward to the hook {n_tokens / s['bare']:.0f} tok/s "
        f"-> {s['bare'] / scan:.2f} of the bare forward's speed",
    ]
