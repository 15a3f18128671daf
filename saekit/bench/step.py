"""Training-step cost as a multiple of one encoder GEMM, for saekit's sparse step and a dense reference.

saekit's step is the trainer's own `training_step` (objective, backward, constrained Adam, post_step,
tracker) on the method's real objective. Everything is timed in one process with interleaved repetitions
(GEMM, saekit, saekit+AuxK, dense, then again), and medians are reported, so machine noise hits every
variant alike.

    rows = time_step_ratios(StepBenchConfig(d_sae=16384, k=32))
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from saekit.sae import SaeConfig, get_method
from saekit.types import Batch


@dataclass(frozen=True)
class StepBenchConfig:
    d_in: int = 768
    d_sae: int = 16384
    k: int = 32
    batch: int = 4096
    dead_fraction: float = 0.01
    reps: int = 5
    warmup: int = 1
    seed: int = 0
    encoder_bf16: bool = False
    """saekit's step with `sae.encoder_bf16` (ratios stay relative to the fp32 GEMM); it runs in fp32 where
    bf16 is not native (`saekit.sae.precision`), and `encoder_bf16_ran` in the result says which ran."""
    method: str = "topk"
    """saekit method whose step is timed (its L0 key is set to k)."""


def _timeit(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_saekit_step(
    cfg: StepBenchConfig, x: torch.Tensor, with_aux: bool, method: str | None = None
) -> Callable[[], None]:
    """The trainer's step on `x` (`method`, default cfg.method), with `dead_fraction` of the latents held
    dead when `with_aux`."""
    from saekit.sae import Sae, init_sae_from_data_, make_objective
    from saekit.train.step import FixedDeadMask, make_optimizer, training_step

    if method is not None:
        cfg = dataclasses.replace(cfg, method=method)
    sae_cfg = bench_sae_config(cfg, with_aux)
    sae = Sae(cfg.d_in, sae_cfg)
    init_sae_from_data_(sae, x[:2048])
    objective = make_objective(sae_cfg)
    optimizer = make_optimizer(sae, lr=1e-4)
    dead = torch.zeros(cfg.d_sae, dtype=torch.bool)
    if with_aux:
        gen = torch.Generator().manual_seed(cfg.seed)
        dead[torch.randperm(cfg.d_sae, generator=gen)[: max(1, int(cfg.dead_fraction * cfg.d_sae))]] = True
    tracker, batch = FixedDeadMask(dead), Batch(acts=x)

    def step() -> None:
        training_step(sae, objective, optimizer, batch, mse_scale=1.0, tracker=tracker)

    step.sae = sae  # type: ignore[attr-defined]  (read back: which encoder GEMM dtype actually ran)
    return step


def bench_sae_config(cfg: StepBenchConfig, with_aux: bool) -> SaeConfig:
    """The timed SAE: `cfg.method` at width d_sae, its L0 key = k, AuxK on or off (where it has AuxK)."""
    keys: dict = {"d_sae": cfg.d_sae, "encoder_bf16": cfg.encoder_bf16, "normalize_activations": "none"}
    method = get_method(cfg.method)
    if method.l0_param is not None:
        keys[method.l0_param] = cfg.k
    if hasattr(method.params, "resolve_k_aux"):
        keys["k_aux"] = None if with_aux else 0
    return SaeConfig.make(cfg.method, **keys)


def make_dense_step(cfg: StepBenchConfig, x: torch.Tensor) -> Callable[[], None]:
    """A straightforward TopK SAE step with dense autograd everywhere (how most code writes it)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    W_enc = torch.nn.Parameter(torch.randn(cfg.d_in, cfg.d_sae, generator=gen) / cfg.d_in**0.5)
    W_dec = torch.nn.Parameter(W_enc.detach().t().clone())
    b_enc = torch.nn.Parameter(torch.zeros(cfg.d_sae))
    b_dec = torch.nn.Parameter(torch.zeros(cfg.d_in))
    optimizer = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=1e-4)

    def step() -> None:
        pre = torch.relu((x - b_dec) @ W_enc + b_enc)
        vals, idx = pre.topk(cfg.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals)
        loss = (z @ W_dec + b_dec - x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W_dec.grad.sub_((W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec)
        optimizer.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=-1, keepdim=True))

    return step


def time_step_ratios(
    cfg: StepBenchConfig,
    include_dense: bool = True,
    *,
    dead_fractions: tuple[float, ...] = (),
    other_methods: tuple[str, ...] = (),
) -> dict[str, float | str]:
    """Median seconds per variant and ratios to one encoder GEMM. Variants: `saekit` (cfg.method, no AuxK),
    `saekit_auxk` (cfg.dead_fraction dead), `auxk@<f>` per extra dead fraction, `<method>` per other
    method (no AuxK), `dense`. `encode_path` says which encoder path cfg.method's step took."""
    from saekit.sae.encode_path import describe_last_choice

    torch.manual_seed(cfg.seed)
    x = torch.randn(cfg.batch, cfg.d_in)
    W = torch.randn(cfg.d_in, cfg.d_sae) / cfg.d_in**0.5
    out = torch.empty(cfg.batch, cfg.d_sae)
    variants: dict[str, Callable[[], None]] = {
        # The reference: one encoder GEMM as anyone writes it, into a fresh output tensor.
        "gemm": lambda: x @ W,
        # The stricter floor: the same GEMM into a warm, preallocated output. On CPU a fresh 256 MiB
        # output is page-faulted in on first touch (~0.1x of the GEMM); saekit's step reuses its buffer.
        "gemm_warm": lambda: torch.mm(x, W, out=out),
        "saekit": make_saekit_step(cfg, x, with_aux=False),
        "saekit_auxk": make_saekit_step(cfg, x, with_aux=True),
    }
    for fraction in dead_fractions:
        variants[f"auxk@{fraction:g}"] = make_saekit_step(
            dataclasses.replace(cfg, dead_fraction=fraction), x, with_aux=True
        )
    for method in other_methods:
        variants[method] = make_saekit_step(cfg, x, with_aux=False, method=method)
    if include_dense:
        variants["dense"] = make_dense_step(cfg, x)
    path = ""
    for name, fn in variants.items():
        for _ in range(cfg.warmup):
            fn()
        if name == "saekit":
            path = describe_last_choice()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(cfg.reps):
        for name, fn in variants.items():
            samples[name].append(_timeit(fn))
    medians = {name: statistics.median(times) for name, times in samples.items()}
    result = {f"{name}_s": t for name, t in medians.items()}
    for name, t in medians.items():
        if name != "gemm":
            result[f"{name}_ratio"] = t / medians["gemm"]
    result["saekit_over_warm_gemm"] = medians["saekit"] / medians["gemm_warm"]
    ran = variants["saekit"].sae.encoder_gemm_ran  # type: ignore[attr-defined]
    result["encoder_bf16_ran"] = 1.0 if ran == torch.bfloat16 else 0.0
    if include_dense:
        result["dense_over_saekit"] = medians["dense"] / medians["saekit"]
    result["encode_path"] = path
    return result
