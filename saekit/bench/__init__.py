"""`saekit bench`: speed and memory of a training step, as ratios to one encoder GEMM, measured in one run.

saekit bench                                   # d_in=768, d_sae∈{16384,32768}, k∈{32,64,128}, B=4096
saekit bench d_sae=4096 k=16 batch=1024 reps=3 memory=false
saekit bench bf16=true                         # saekit's encoder GEMM in bf16 (sae.encoder_bf16), where
                                               # native; the output says which dtype actually ran
saekit bench method=batchtopk d_sae=16384 k=32   # another method's training step
saekit bench reps=3 d_sae=16384 memory=false dense=false   # the quick table (~4 min on 2 quiet cores)
saekit bench collection=true                   # + tokens/s of `collect` vs a bare model forward
saekit bench device=cuda                       # Triton kernels vs torch twins (a CUDA machine only)
saekit bench mode=streams saes=4 d_sae=4096      # N SAEs from one cache stream vs N separate runs
saekit bench mode=ranks d_sae=4096 batch=1024    # tokens/s: 1 process vs torchrun with 2 ranks
saekit bench mode=index run=runs/demo/topk       # index with vs without output scores; scan vs forward
"""

from __future__ import annotations

import itertools
import logging

import torch

from saekit.bench.collection import collection_lines
from saekit.bench.memory import measure_in_subprocess
from saekit.bench.step import StepBenchConfig, time_step_ratios
from saekit.config import BenchConfig
from saekit.sae.precision import SLOWDOWN_NOTE

logger = logging.getLogger(__name__)


def run_bench(cfg: BenchConfig) -> str:
    if cfg.mode == "streams":  # N SAEs from one cache stream vs N separate runs
        from saekit.bench.streams import run_streams_bench

        return run_streams_bench(cfg)
    if cfg.mode == "ranks":  # training tokens/s: one process vs torchrun data parallelism
        from saekit.bench.ranks import run_ranks_bench

        return run_ranks_bench(cfg)
    if cfg.mode == "index":  # saekit index with and without output scores; scan vs a bare forward
        from saekit.bench.index import run_index_bench

        return run_index_bench(cfg)
    if cfg.device == "cuda":
        from saekit.bench.device import run_device_bench

        return run_device_bench(cfg)
    return "\n".join(_step_table(cfg) + (collection_lines(cfg) if cfg.collection else []))


def _step_table(cfg: BenchConfig) -> list[str]:
    """The step table: per (d_sae, k), the trainer's step for each variant as a multiple of one GEMM."""
    from saekit.kernels import kernel_backend
    from saekit.sae.encode_path import cpu_capability, set_encode_path

    torch.set_num_threads(cfg.threads)
    if cfg.encode_path != "auto":  # auto leaves SAEKIT_ENCODE_PATH (or the measurement) in charge
        set_encode_path(cfg.encode_path)
    with_memory, with_dense, bf16 = cfg.memory, cfg.dense, cfg.bf16
    extra = [f"auxk@{f:g}" for f in cfg.dead] + list(cfg.others)
    lines = [
        f"saekit bench: method={cfg.method} backend={kernel_backend()} threads={torch.get_num_threads()} "
        f"cpu={cpu_description()} capability={cpu_capability()} fp32"
        f"{' (saekit encoder GEMM in bf16 requested)' if bf16 else ''}; times are "
        "medians of interleaved repetitions; ratios are to one encoder GEMM [B,d_in]x[d_in,d_sae] into a "
        "fresh output (step/warm: to the same GEMM into a preallocated output)",
        f"{'d_sae':>6} {'k':>3} {'B':>5} | {'gemm ms':>8} {'step':>6} {'+auxk':>6} "
        + "".join(f"{name:>10} " for name in extra)
        + f"{'dense':>6} {'dense/saekit':>12} {'step/warm':>9} | peak MiB (budget): saekit / +auxk / dense",
    ]
    peaks: dict[int, list[tuple[int, float, float]]] = {}
    bf16_ran: set[bool] = set()
    paths: set[str] = set()
    for d_sae, k in itertools.product(cfg.d_sae, cfg.k):
        step_cfg = StepBenchConfig(
            d_in=cfg.d_in,
            d_sae=d_sae,
            k=k,
            batch=cfg.batch,
            reps=cfg.reps,
            encoder_bf16=bf16,
            method=cfg.method,
        )
        logger.info("timing d_sae=%d k=%d", d_sae, k)
        timings = time_step_ratios(
            step_cfg, include_dense=with_dense, dead_fractions=cfg.dead, other_methods=cfg.others
        )
        bf16_ran.add(timings["encoder_bf16_ran"] == 1.0)
        paths.add(f"d_sae={d_sae} k={k}: {timings['encode_path']}")
        row = _timing_row(step_cfg, timings, with_dense, extra)
        if with_memory:
            variants = ["saekit", "saekit_auxk"] + (["dense"] if with_dense else [])
            mems = [measure_in_subprocess(v, step_cfg, cfg.encode_path) for v in variants]
            row += " " + " / ".join(f"{m['peak_mib']:.0f}" for m in mems) + f" ({mems[0]['budget_mib']:.0f})"
            peaks.setdefault(k, []).append((d_sae, mems[0]["peak_mib"], mems[0]["budget_mib"]))
        lines.append(row)
    lines.append(encoder_path_line(bf16, bf16_ran))
    lines += sorted(paths)
    lines += _memory_growth_lines(peaks)
    lines.append(
        "targets (issue 14): step ≤ 1.2× GEMM at d_sae=16384,k=32 (≤ 1.6× at k=128); +auxk ≤ 1.3× with 1% "
        "dead; peak ≤ weights+grads+Adam+one pre-activation buffer ([B,d_sae] dense path, one tile fused)"
    )
    return lines


def encoder_path_line(requested: bool, ran: set[bool]) -> str:
    """Which dtype saekit's encoder GEMM actually ran in during the timed steps."""
    if ran == {True}:
        return "encoder GEMM ran in: bf16 (native on this machine)"
    if ran == {False} and requested:
        return (
            "encoder GEMM ran in: fp32 — bf16 was requested but is not native on this CPU, so saekit kept "
            f"fp32 ({SLOWDOWN_NOTE})"
        )
    if ran == {False}:
        return "encoder GEMM ran in: fp32"
    return "encoder GEMM ran in: bf16 for some rows, fp32 for others"


def cpu_description() -> str:
    """CPU model and vector extensions that matter for the GEMMs (AVX2 / AVX512 / native bf16)."""
    import platform

    try:
        info = open("/proc/cpuinfo").read()  # noqa: SIM115  Linux only; elsewhere the platform string
    except OSError:
        return platform.processor() or platform.machine()
    lines = info.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    isa = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if name in flags]
    return f"{model} [{'/'.join(isa) or 'no avx2'}]"


def _timing_row(cfg: StepBenchConfig, r: dict, with_dense: bool, extra: list[str]) -> str:
    dense = f"{r['dense_ratio']:6.2f} {r['dense_over_saekit']:12.2f}" if with_dense else f"{'-':>6} {'-':>12}"
    return (
        f"{cfg.d_sae:>6} {cfg.k:>3} {cfg.batch:>5} | {r['gemm_s'] * 1e3:8.2f} {r['saekit_ratio']:6.2f} "
        f"{r['saekit_auxk_ratio']:6.2f} "
        + "".join(f"{r[f'{name}_ratio']:10.2f} " for name in extra)
        + f"{dense} {r['saekit_over_warm_gemm']:9.2f} |"
    )


def _memory_growth_lines(peaks: dict[int, list[tuple[int, float, float]]]) -> list[str]:
    """How saekit's peak grows between consecutive widths, against the budget's growth: the constant part
    of the peak (imports' allocator state, batch-sized tensors) cancels out, what depends on d_sae stays."""
    lines = []
    for k, points in peaks.items():
        points.sort()
        for (d0, p0, b0), (d1, p1, b1) in itertools.pairwise(points):
            lines.append(
                f"memory k={k}: d_sae {d0}→{d1}: saekit peak +{p1 - p0:.0f} MiB vs budget +{b1 - b0:.0f} MiB "
                f"({(p1 - p0) / (b1 - b0):.2f}×)"
            )
    return lines
