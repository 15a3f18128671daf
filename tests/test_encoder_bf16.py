"""`sae.encoder_bf16`: the dense encoder GEMM in bf16, everything else (weights, gradients, Adam) in fp32.

The native-bf16 probe is forced to True, so the bf16 path runs (emulated where the CPU lacks bf16) on
every machine; the fp32 fallback is tested in test_model_names_and_bf16.py."""

import pytest
import torch

import saekit.sae.precision as precision
from saekit.config import SaeConfig
from saekit.sae import Sae, init_sae_from_data_, make_objective, mse_scale_from_sample
from saekit.synthetic import SparseDictionaryData
from saekit.train.step import training_step
from saekit.types import Batch


@pytest.fixture(autouse=True)
def _bf16_is_native(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16_gemm", lambda device: True)


def pair(method="topk", **kw):
    """Two SAEs with identical weights, one with the bf16 encoder GEMM."""
    exact = Sae(32, SaeConfig.make(method, k=4, d_sae=256, **kw))
    fast = Sae(32, SaeConfig.make(method, k=4, d_sae=256, encoder_bf16=True, **kw))
    with torch.no_grad():
        exact.b_enc.copy_(0.1 * torch.randn(256))
    fast.load_state_dict(exact.state_dict())
    return exact, fast


@pytest.mark.parametrize("reuse", [False, True])
def test_pre_activations_are_fp32_and_within_bf16_rounding(reuse):
    exact, fast = pair()
    x = torch.randn(64, 32)
    want = exact.dense_pre_acts(x)
    got = fast.train().dense_pre_acts(x, reuse_buffer=reuse)
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = (got - want).abs()
    assert err.max() > 0  # the GEMM really ran in bf16 ...
    assert err.max() <= 2**-7 * (x.abs() @ exact.W_enc.abs()).max()  # ... and only rounding separates them


@pytest.mark.parametrize("method", ["topk", "feature_choice", "batchtopk"])
def test_gradients_are_fp32_gradients_of_the_selection_bf16_made(method):
    _, fast = pair(method)
    x = torch.randn(64, 32)
    out = fast.train()(x)
    (out.x_hat - x).pow(2).sum().backward()
    params = (fast.W_enc_T, fast.b_enc, fast.W_dec, fast.b_dec)
    got = [p.grad.clone() for p in params]
    assert all(g.dtype == torch.float32 for g in got) and got[0].abs().sum() > 0
    # Reference: the fp32 model, dense autograd, masked to the entries the bf16 GEMM selected.
    fast.zero_grad()
    h = (x - fast.b_dec) @ fast.W_enc + fast.b_enc
    mask = torch.zeros_like(h)
    mask[out.code.row_ids(), out.code.indices] = 1.0
    ((torch.relu(h) * mask) @ fast.W_dec + fast.b_dec - x).pow(2).sum().backward()
    for g, p in zip(got, params, strict=True):
        # Only the bf16 rounding of the selected values (relative 2^-8) separates the two.
        assert (g - p.grad).abs().max() <= 2e-2 * p.grad.abs().max()


def test_training_with_the_bf16_encoder_reaches_the_fp32_loss():
    torch.manual_seed(0)
    data = SparseDictionaryData(d_in=32, n_features=128, k_active=4, seed=0)
    sample = data.sample(2048)
    finals = []
    for bf16 in (False, True):
        torch.manual_seed(1)
        sae = Sae(32, SaeConfig.make("topk", k=4, d_sae=128, encoder_bf16=bf16, normalize_activations="none"))
        init_sae_from_data_(sae, sample)
        objective, scale = make_objective(sae.cfg), mse_scale_from_sample(sample)
        optimizer = torch.optim.Adam(sae.parameters(), lr=3e-3)
        for _ in range(150):
            out = training_step(sae, objective, optimizer, Batch(data.sample(256)), mse_scale=scale)
        finals.append(out.metrics["fvu"])
    fp32_fvu, bf16_fvu = finals
    assert fp32_fvu < 0.5  # it learned something
    assert bf16_fvu == pytest.approx(fp32_fvu, abs=0.05)
