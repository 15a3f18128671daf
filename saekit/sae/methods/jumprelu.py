"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"): z_i = h_i·H(h_i − θ_i) with a trained
per-latent threshold θ, and a sparsity penalty trained through straight-through estimators (STE).

Forward: a latent is active when its pre-activation exceeds its threshold; its value is then h itself.
Backward (rectangle kernel K(u) = 1[|u| < ½], bandwidth ε):
    ∂z/∂h = H(h − θ)                 ∂z/∂θ = −(θ/ε)·K((h − θ)/ε)
    ∂H(h − θ)/∂θ = −(1/ε)·K((h − θ)/ε)   (the L0 term gives h no gradient, as in the paper)
Only entries with h > θ − ε/2 can have a non-zero gradient, so training selects that band (its entries
below θ join the code with value 0: they decode to nothing but carry ∂L/∂z for θ) and everything else stays
sparse. Inference is `threshold_selection`, the rule BatchTopK's learned thresholds also use.

Sparsity penalties (`sparsity`):
- "l0" (the paper): λ·E_b[L0_b];
- "tanh" (Anthropic, 2025 update): λ·E_b[Σ_i tanh(c·z_i)] (decoder rows are unit norm here, so ‖d_i‖ = 1);
- "quadratic_l0" (default): λ·(E_b[L0_b]/target_l0 − 1)², which pulls the mean L0 to `target_l0` without a
  λ sweep (saekit's form of a target-L0 penalty; equal-L0 comparisons need it).
λ ramps up linearly over `sparsity_warmup_steps` (the paper warms λ up).

Choices made here (documented, not from the paper):
- θ starts per latent at the (1 − target_l0/d_sae) quantile of its pre-activations on the initialisation
  sample, so training starts at the target L0 (`threshold_init` sets a constant instead; the paper: 0.001).
- ε = 0.05 in saekit's normalised space (E‖x‖ = √d_in). The paper's 0.001 is for inputs with unit mean
  squared norm; pre-activations here are larger by about √d_in (≈ 50 for Gemma-2-2B's width).
- θ is clamped at ≥ 0 after each step (JumpReLU needs θ > 0; values are ReLU'd, so θ = 0 is plain ReLU).
- θ learns 10× faster than the weights (`threshold_lr_scale`). Adam moves θ by about one learning rate per
  step, and the L0 estimator gives the encoder no gradient, so at equal learning rates θ cannot follow the
  pre-activations in runs of a few hundred steps: on the tiny model (target 8, 125 steps) L0 fell to 2.6
  before recovering to 5.2 at FVU 0.45, while at 10× it held 7.9–8.1 at FVU 0.37. The paper's runs (10⁵+
  steps) are long enough for 1.

    sae = Sae(d_in, SaeConfig.make("jumprelu", target_l0=32))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from saekit.config_io import require
from saekit.sae.activations import Activation
from saekit.sae.config import Params
from saekit.sae.method import Method, register_method
from saekit.sae.methods.batchtopk import threshold_selection
from saekit.sae.objective import Objective, StepOutput, firing, step_metrics
from saekit.types import Batch, SparseCode

if TYPE_CHECKING:
    from saekit.sae.model import Sae

INIT_SAMPLE_ROWS = 4096
"""Rows of the initialisation sample used for the threshold quantiles (memory: rows × d_sae floats)."""


@dataclass(frozen=True)
class JumpReluParams(Params):
    target_l0: float = 32.0
    """Mean active latents per token aimed at: the quadratic penalty's target and the threshold init."""
    sparsity: Literal["quadratic_l0", "l0", "tanh"] = "quadratic_l0"
    """Sparsity penalty: quadratic_l0 (pull the mean L0 to target_l0), l0 (the paper), tanh (Anthropic)."""
    sparsity_coef: float = 1.0
    """λ. Suggested starts: quadratic_l0 1.0; l0 and tanh about 1e-3 (FVU units per active latent)."""
    sparsity_warmup_steps: int = 0
    """λ grows linearly from 0 over this many steps (0: full λ from the start)."""
    bandwidth: float = 0.05
    """ε of the rectangle kernel of the straight-through estimators (normalised input space)."""
    threshold_init: float | None = None
    """A constant initial threshold; null: per latent, the quantile giving target_l0 on the init sample."""
    tanh_scale: float = 4.0
    """c of the tanh penalty tanh(c·z)."""
    threshold_lr_scale: float = 10.0
    """Learning rate of the thresholds relative to the other weights (see the module docstring)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.target_l0 > 0, "target_l0", "must be a positive mean number of active latents")
        require(self.sparsity_coef >= 0, "sparsity_coef", "must be >= 0")
        require(self.sparsity_warmup_steps >= 0, "sparsity_warmup_steps", "must be >= 0")
        require(self.bandwidth > 0, "bandwidth", "must be positive")
        require(self.threshold_init is None or self.threshold_init >= 0, "threshold_init", "must be >= 0")
        require(self.tanh_scale > 0, "tanh_scale", "must be positive")
        require(self.threshold_lr_scale > 0, "threshold_lr_scale", "must be positive")


# ---------------------------------------------------------------------------------------- STE functions


def _rectangle(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class JumpReluFn(torch.autograd.Function):
    """z = h·H(h − θ); ∂z/∂h = H(h − θ), ∂z/∂θ = −(θ/ε)·K((h − θ)/ε)."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > theta).to(grad.dtype)
        grad_theta = -(theta / eps) * _rectangle((pre - theta) / eps) * grad
        return grad_pre, grad_theta, None


class StepFn(torch.autograd.Function):
    """H(h − θ); no gradient to h, ∂/∂θ = −(1/ε)·K((h − θ)/ε)."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        return None, -(1.0 / eps) * _rectangle((pre - theta) / eps) * grad, None


# ---------------------------------------------------------------------------------------- activation


class JumpRelu(Activation):
    """Per-latent trained thresholds; training also selects the ε/2 band below θ for the STE gradients."""

    threshold = "parameter"

    def __init__(self, params: JumpReluParams) -> None:
        super().__init__(params)
        self.bandwidth = params.bandwidth

    def select(
        self, h: Float[Tensor, "batch d_sae"], *, sae: Sae, batch: Batch | None, training: bool
    ) -> SparseCode:
        theta = sae.threshold.detach().to(h.dtype)
        return threshold_selection(h, theta - self.bandwidth / 2 if training else theta)

    def values(self, pre: Float[Tensor, " nnz"], code: SparseCode, sae: Sae) -> Float[Tensor, " nnz"]:
        theta = sae.threshold.index_select(0, code.indices).to(pre.dtype)
        return torch.relu(JumpReluFn.apply(pre, theta, self.bandwidth))

    def folded_params(self, scale: float) -> JumpReluParams:
        """The threshold tensor is divided by the scale with the biases; ε and a constant init follow."""
        init = None if self.params.threshold_init is None else self.params.threshold_init / scale
        return dataclasses.replace(self.params, bandwidth=self.params.bandwidth / scale, threshold_init=init)

    def lr_scales(self) -> dict[str, float]:
        return {"threshold": self.params.threshold_lr_scale} if self.params.threshold_lr_scale != 1.0 else {}

    @torch.no_grad()
    def init_from_data_(self, sae: Sae, x: Float[Tensor, "n d_in"]) -> None:
        if self.params.threshold_init is not None:
            sae.threshold.fill_(self.params.threshold_init)
            return
        h = sae.dense_pre_acts(x[:INIT_SAMPLE_ROWS].to(sae.W_enc.dtype))
        n = h.shape[0]
        fire_rate = min(1.0, self.params.target_l0 / sae.d_sae)
        k = min(n, max(1, math.ceil(n * (1.0 - fire_rate))))  # the k-th smallest: fire on the top n − k
        sae.threshold.copy_(torch.kthvalue(h, k, dim=0).values.clamp_min(0.0))


# ---------------------------------------------------------------------------------------- objective


class JumpReluObjective(Objective):
    """mse_scale·mean((x̂ − x)²) + λ_t·sparsity; θ clamped at ≥ 0 after each step."""

    def __init__(self, params: JumpReluParams) -> None:
        super().__init__(params)
        self.steps_done = 0

    def __call__(
        self, sae: Sae, batch: Batch, *, dead_mask: Bool[Tensor, " d_sae"] | None, mse_scale: float
    ) -> StepOutput:
        x = batch.acts.to(sae.W_dec.dtype)
        out = sae(x, batch)
        main = mse_scale * (out.x_hat - x).pow(2).mean()
        sparsity = self.sparsity(sae, out.code, out.selected_pre, x.shape[0])
        loss = main + self.coef() * sparsity
        terms = {"main": main, "sparsity": sparsity, "total": loss}
        losses, metrics = step_metrics(x, out.x_hat, out.code, terms)
        metrics["fvu"] = losses["main"]
        metrics["n_dead"] = 0.0 if dead_mask is None else float(dead_mask.sum().item())
        metrics["threshold_mean"] = float(sae.threshold.detach().mean())
        return StepOutput(loss=loss, losses=losses, metrics=metrics, **firing(out.code))

    def coef(self) -> float:
        warmup = self.params.sparsity_warmup_steps
        ramp = 1.0 if warmup == 0 else min(1.0, (self.steps_done + 1) / warmup)
        return self.params.sparsity_coef * ramp

    def sparsity(self, sae: Sae, code: SparseCode, pre: Tensor, n_rows: int) -> Tensor:
        p = self.params
        if p.sparsity == "tanh":
            return torch.tanh(p.tanh_scale * code.values).sum() / n_rows
        theta = sae.threshold.index_select(0, code.indices).to(pre.dtype)
        l0 = StepFn.apply(pre.detach(), theta, p.bandwidth).sum() / n_rows
        if p.sparsity == "l0":
            return l0
        return (l0 / p.target_l0 - 1.0).pow(2)

    @torch.no_grad()
    def post_step(self, sae: Sae, optimizer: torch.optim.Optimizer, out: StepOutput) -> None:
        sae.threshold.clamp_(min=0.0)
        self.steps_done += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any], sae: Sae) -> None:
        self.steps_done = int(state.get("steps_done", 0))


JUMPRELU = register_method(
    Method(
        name="jumprelu",
        params=JumpReluParams,
        activation=JumpRelu,
        objective=JumpReluObjective,
        summary="JumpReLU (Rajamanoharan et al. 2024): trained per-latent thresholds, STE sparsity penalty",
        l0_param="target_l0",
    )
)
