"""A short training run gives the same losses with the Triton kernels (interpreter) and the torch twins."""

import pytest
import torch

from saekit.config import SaeConfig
from saekit.kernels import backend
from saekit.sae import Sae, init_sae_from_data_, make_objective, mse_scale_from_sample
from saekit.sae.objective import ReconstructionAuxK
from saekit.train.dead import DeadLatentTracker
from saekit.train.step import training_step
from saekit.types import Batch


def _short_run(monkeypatch, kernels: str, steps: int = 4) -> tuple[list[float], str]:
    monkeypatch.setenv("SAEKIT_KERNELS", kernels)
    backend.reset_kernel_backend()
    chosen = backend.kernel_backend()
    torch.manual_seed(0)
    data = torch.randn(6 * steps, 24)
    cfg = SaeConfig.make("topk", k=3, d_sae=40, k_aux=4, dead_tokens=6)
    sae = Sae(24, cfg)
    init_sae_from_data_(sae, data)
    objective = make_objective(cfg)
    assert type(objective) is ReconstructionAuxK  # TopK + AuxK
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    tracker = DeadLatentTracker(sae.d_sae, cfg.dead_tokens)
    scale = mse_scale_from_sample(data)
    losses = []
    for step in range(steps):
        batch = Batch(acts=data[6 * step : 6 * (step + 1)])
        out = training_step(sae, objective, optimizer, batch, mse_scale=scale, tracker=tracker)
        losses.append(float(out.loss.detach()))
    backend.reset_kernel_backend()
    return losses, chosen


def test_triton_and_torch_backends_train_alike(monkeypatch):
    torch_losses, chosen_torch = _short_run(monkeypatch, "torch")
    triton_losses, chosen_triton = _short_run(monkeypatch, "triton")
    assert (chosen_torch, chosen_triton) == ("torch", "triton")
    assert any(loss > 0 for loss in torch_losses)
    assert triton_losses == pytest.approx(torch_losses, rel=1e-4, abs=1e-6)
