"""`saekit bench`: speed and memory of a training step, as ratios to one encoder GEMM, measured in one run.

saekit bench                                   # d_in=768, d_sae∈{16384,32768}, k∈{32,64}, B=4096
saekit bench d_sae=4096 k=16 batch=1024 reps=3 memory=false
saekit bench bf16=true                         # saekit's encoder GEMM in bf16 (sae.encoder_bf16), where
                                               # native; the output says which dtype actually ran
saekit bench method=batchtopk d_sae=16384 k=32   # another method's training step
"""

from __future__ import annotations

import itertools
import logging

import torch

from saekit.bench.memory import measure_in_subprocess
from saekit.bench.step import StepBenchConfig, time_step_ratios
from saekit.config import BenchConfig
from saekit.sae.precision import SLOWDOWN_NOTE

logger = logging.getLogger(__name__)


def run_bench(cfg: BenchConfig) -> str:
    torch.set_num_threads(cfg.threads)
    with_memory, with_dense, bf16 = cfg.memory, cfg.dense, cfg.bf16
    from saekit.kernels import kernel_backend

    lines = [
        f"saekit bench: method={cfg.method} backend={kernel_backend()} threads={torch.get_num_threads()} "
        f"cpu={cpu_description()} fp32"
        f"{' (saekit encoder GEMM in bf16 requested)' if bf16 else ''}; times are "
        "medians of interleaved repetitions; ratios are to one encoder GEMM [B,d_in]x[d_in,d_sae] into a "
        "fresh output (step/warm: to the same GEMM into a preallocated output)",
        f"{'d_sae':>6} {'k':>3} {'B':>5} | {'gemm ms':>8} {'step':>6} {'+auxk':>6} {'dense':>6} "
        f"{'dense/saekit':>12} {'step/warm':>9} | peak MiB (budget): saekit / +auxk / dense",
    ]
    peaks: dict[int, list[tuple[int, float, float]]] = {}
    bf16_ran: set[bool] = set()
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
        timings = time_step_ratios(step_cfg, include_dense=with_dense)
        bf16_ran.add(timings["encoder_bf16_ran"] == 1.0)
        row = _timing_row(step_cfg, timings, with_dense)
        if with_memory:
            variants = ["saekit", "saekit_auxk"] + (["dense"] if with_dense else [])
            mems = [measure_in_subprocess(v, step_cfg) for v in variants]
            row += " " + " / ".join(f"{m['peak_mib']:.0f}" for m in mems) + f" ({mems[0]['budget_mib']:.0f})"
            peaks.setdefault(k, []).append((d_sae, mems[0]["peak_mib"], mems[0]["budget_mib"]))
        lines.append(row)
    lines.append(encoder_path_line(bf16, bf16_ran))
    lines += _memory_growth_lines(peaks)
    lines.append(
        "targets (issue 3): step ≤ 1.35× GEMM at d_sae=16384,k=32; +auxk ≤ 1.5× with 1% dead; "
        "dense ≥ 4× saekit; peak grows with d_sae only as the budget does (weights+grads+Adam+one "
        "[B,d_sae] tensor)"
    )
    return "\n".join(lines)


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


def _timing_row(cfg: StepBenchConfig, r: dict[str, float], with_dense: bool) -> str:
    dense = f"{r['dense_ratio']:6.2f} {r['dense_over_saekit']:12.2f}" if with_dense else f"{'-':>6} {'-':>12}"
    return (
        f"{cfg.d_sae:>6} {cfg.k:>3} {cfg.batch:>5} | {r['gemm_s'] * 1e3:8.2f} {r['saekit_ratio']:6.2f} "
        f"{r['saekit_auxk_ratio']:6.2f} {dense} {r['saekit_over_warm_gemm']:9.2f} |"
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
