"""`saekit bench device=cuda`: the Triton kernels against their torch twins, and the step against a bf16 GEMM.

Per (d_sae, k), with B=`batch` rows of width `d_in`, timed with CUDA events (medians of `reps` interleaved
rounds, after a warm-up that also compiles the kernels):
- decode fwd+bwd: `triton_sparse_decode` vs the torch twin (`F.embedding_bag`), same CSR code;
- encode+top-k: the fused Triton kernel (fp32, and bf16 operands) vs `addmm` + `torch.topk`;
- step: the trainer's `training_step` (auto backend: Triton on CUDA; `sae.encoder_bf16`) vs one bf16 GEMM.
Targets (issue 14): decode ≥ 5× the twin at d_sae 131072; step ≤ 1.3× a bf16 GEMM.

    saekit bench device=cuda k=32,64,128
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from saekit.bench.step import StepBenchConfig, make_saekit_step
from saekit.config import BenchConfig
from saekit.errors import ConfigError

WIDTHS = (16384, 65536, 131072)


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise ConfigError(
            "bench device=cuda: no CUDA device is visible to torch here; run it on a GPU machine"
        )


def _cuda_medians(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    torch.cuda.synchronize()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples[name].append(start.elapsed_time(end) / 1e3)
    return {name: statistics.median(times) for name, times in samples.items()}


def _decode_pair(batch: int, d_in: int, d_sae: int, k: int) -> dict[str, Callable[[], object]]:
    from saekit.kernels.torch_ops import sparse_decode_torch
    from saekit.kernels.triton_decode import triton_sparse_decode

    dev = torch.device("cuda")
    W = torch.randn(d_sae, d_in, device=dev, requires_grad=True)
    b = torch.zeros(d_in, device=dev, requires_grad=True)
    idx = torch.randint(0, d_sae, (batch * k,), device=dev)
    vals = torch.rand(batch * k, device=dev, requires_grad=True)
    offsets = torch.arange(0, (batch + 1) * k, k, device=dev)
    probe = torch.randn(batch, d_in, device=dev)

    def run(fn: Callable) -> Callable[[], object]:
        return lambda: (fn(idx, vals, offsets, W, b) * probe).sum().backward()

    return {"decode_triton": run(triton_sparse_decode), "decode_torch": run(sparse_decode_torch)}


def _encode_trio(batch: int, d_in: int, d_sae: int, k: int) -> dict[str, Callable[[], object]]:
    from saekit.kernels.fused_topk import fused_encode_topk

    dev = torch.device("cuda")
    x = torch.randn(batch, d_in, device=dev)
    W_T = torch.randn(d_sae, d_in, device=dev) / d_in**0.5
    b = torch.zeros(d_sae, device=dev)
    W_bf16, x_bf16 = W_T.bfloat16(), x.bfloat16()
    return {
        "encode_fused": lambda: fused_encode_topk(x, W_T, b, k),
        "encode_fused_bf16": lambda: fused_encode_topk(x, W_T, b, k, bf16=True),
        "encode_torch": lambda: torch.topk(torch.addmm(b, x, W_T.t()), k, dim=1, sorted=False),
        "gemm_bf16": lambda: x_bf16 @ W_bf16.t(),
    }


def _step(cfg: BenchConfig, d_sae: int, k: int) -> Callable[[], object]:
    step_cfg = StepBenchConfig(
        d_in=cfg.d_in, d_sae=d_sae, k=k, batch=cfg.batch, encoder_bf16=True, method=cfg.method
    )
    x = torch.randn(cfg.batch, cfg.d_in)
    torch.set_default_device("cuda")  # the step builds its SAE and optimiser on the default device
    try:
        return make_saekit_step(step_cfg, x.cuda(), with_aux=False)
    finally:
        torch.set_default_device("cpu")


def run_device_bench(cfg: BenchConfig) -> str:
    _require_cuda()
    from saekit.kernels import kernel_backend

    lines = [
        f"saekit bench device=cuda: {torch.cuda.get_device_name()} backend={kernel_backend()} B={cfg.batch} "
        f"d_in={cfg.d_in}; medians of {cfg.reps} interleaved rounds (CUDA events)",
        f"{'d_sae':>6} {'k':>3} | {'decode triton ms':>16} {'torch/triton':>12} | {'encode fused ms':>15} "
        f"{'bf16 ms':>8} {'torch/fused':>11} | {'bf16 GEMM ms':>12} {'step/bf16 GEMM':>14}",
    ]
    for d_sae in WIDTHS:
        for k in cfg.k:
            fns = {
                **_decode_pair(cfg.batch, cfg.d_in, d_sae, k),
                **_encode_trio(cfg.batch, cfg.d_in, d_sae, k),
            }
            fns["step"] = _step(cfg, d_sae, k)
            t = _cuda_medians(fns, cfg.reps)
            lines.append(
                f"{d_sae:>6} {k:>3} | {t['decode_triton'] * 1e3:16.3f} "
                f"{t['decode_torch'] / t['decode_triton']:12.2f} | "
                f"{t['encode_fused'] * 1e3:15.3f} {t['encode_fused_bf16'] * 1e3:8.3f} "
                f"{t['encode_torch'] / t['encode_fused']:11.2f} | {t['gemm_bf16'] * 1e3:12.3f} "
                f"{t['step'] / t['gemm_bf16']:14.2f}"
            )
            del fns
            torch.cuda.empty_cache()
    lines.append(
        "targets (issue 14): decode fwd+bwd ≥ 5× the torch twin at d_sae 131072; step ≤ 1.3× a bf16 GEMM"
    )
    return "\n".join(lines)
