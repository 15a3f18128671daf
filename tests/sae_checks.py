"""Checks and training loops that several method test files share (imported as a plain module, like
fixtures_run; pytest puts tests/ on sys.path).

    out, got = assert_grads_match_dense_reference(sae, x)   # the forward output and its checked grads
    sae = train_on_synthetic(cfg, data, steps=300, batch_rows=256)   # the trainer's own step function
"""

import torch
from torch import Tensor

from saekit.sae import Sae, SaeOutput, init_sae_from_data_, make_objective, mse_scale_from_sample
from saekit.train.step import training_step
from saekit.types import Batch


def assert_grads_match_dense_reference(sae: Sae, x: Tensor) -> tuple[SaeOutput, list[Tensor]]:
    """Backprop a squared error through the SAE's sparse path and through a dense masked-ReLU reference
    on the same selection; assert equal gradients for W_enc_T, b_enc, W_dec, b_dec. Returns the forward
    output and the sparse-path gradients (callers check more, e.g. that unselected columns got none)."""
    params = (sae.W_enc_T, sae.b_enc, sae.W_dec, sae.b_dec)
    out = sae(x)
    (out.x_hat - x).pow(2).sum().backward()
    got = [p.grad.clone() for p in params]
    sae.zero_grad()
    h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    mask = torch.zeros_like(h)
    mask[out.code.row_ids(), out.code.indices] = 1.0
    x_hat = (torch.relu(h) * mask) @ sae.W_dec + sae.b_dec
    (x_hat - x).pow(2).sum().backward()
    for g, p in zip(got, params, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-5)
    return out, got


def train_on_synthetic(cfg, data, *, steps: int, batch_rows: int, lr: float = 3e-3, objective=None) -> Sae:
    """A short run of `training_step` (the trainer's step: objective, Adam + decoder constraint, post_step)
    on synthetic `data`, data-initialised, without dead-latent tracking; returns the SAE in eval mode.
    `objective` defaults to the method's own (`make_objective(cfg)`). Seeding is the caller's business."""
    from saekit.train.step import make_optimizer

    sae = Sae(data.d_in, cfg)
    init_sae_from_data_(sae, data.sample(2048))
    mse_scale = mse_scale_from_sample(data.sample(4096))
    objective = objective if objective is not None else make_objective(cfg)
    optimizer = make_optimizer(sae, lr=lr)
    for _ in range(steps):
        training_step(sae, objective, optimizer, Batch(data.sample(batch_rows)), mse_scale=mse_scale)
    return sae.eval()
