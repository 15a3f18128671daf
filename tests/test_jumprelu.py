"""JumpReLU (Rajamanoharan et al. 2024): the STE gradients, the threshold rule, the target-L0 penalty, and the
method living in one module (trained, evaluated and saved like every other method)."""

import dataclasses

import pytest
import torch
from sae_checks import train_on_synthetic

from saekit.errors import ConfigError
from saekit.sae import Sae, SaeConfig, fold_act_scale, init_sae_from_data_, make_objective
from saekit.sae.methods.jumprelu import JumpReluFn, StepFn
from saekit.synthetic import SparseDictionaryData
from saekit.train.step import make_optimizer, training_step
from saekit.types import Batch


def jumprelu_sae(d_in=16, d_sae=48, **keys) -> Sae:
    torch.manual_seed(0)
    return Sae(d_in, SaeConfig.make("jumprelu", d_sae=d_sae, normalize_activations="none", **keys))


def test_jumprelu_function_forward_and_ste_gradients():
    eps = 0.1
    pre = torch.tensor([0.30, 0.52, 0.47, 0.80, 0.10], requires_grad=True)
    theta = torch.tensor([0.50, 0.50, 0.50, 0.50, 0.50], requires_grad=True)
    z = JumpReluFn.apply(pre, theta, eps)
    torch.testing.assert_close(z.detach(), torch.tensor([0.0, 0.52, 0.0, 0.80, 0.0]))
    z.sum().backward()
    # dz/dh = H(h − θ); dz/dθ = −(θ/ε)·1[|h − θ| < ε/2]: only the two entries within 0.05 of θ
    torch.testing.assert_close(pre.grad, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, -5.0, -5.0, 0.0, 0.0]))


def test_step_function_gives_theta_but_not_h_a_gradient():
    eps = 0.1
    pre = torch.tensor([0.52, 0.47, 0.80])
    theta = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    h = StepFn.apply(pre, theta, eps)
    torch.testing.assert_close(h.detach(), torch.tensor([1.0, 0.0, 1.0]))
    h.sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-10.0, -10.0, 0.0]))


def test_inference_is_the_per_token_threshold_rule_and_batch_independent():
    sae = jumprelu_sae().eval()
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(sae.d_sae) * 0.5)
    x = torch.randn(12, sae.d_in)
    code = sae.encode(x)
    h = sae.dense_pre_acts(x)
    expected = torch.where(h > sae.threshold, h, torch.zeros_like(h)).clamp_min(0)
    torch.testing.assert_close(code.to_dense(), expected)
    one = sae.encode(x[3:4])
    torch.testing.assert_close(one.to_dense()[0], code.to_dense()[3])


def test_training_selection_adds_the_band_below_the_threshold_with_zero_values():
    sae = jumprelu_sae(bandwidth=0.2).train()
    with torch.no_grad():
        sae.threshold.fill_(0.3)
    x = torch.randn(32, sae.d_in)
    out = sae(x)
    h = sae.dense_pre_acts(x)
    band = (h > 0.2) & (h <= 0.3)
    assert band.any(), "the random data must put some pre-activations in the band"
    assert out.code.indices.numel() == int((h > 0.2).sum())  # active entries plus the band
    dense = out.code.to_dense().detach()
    assert torch.all(dense[band] == 0)
    torch.testing.assert_close(dense[h > 0.3], h[h > 0.3])


def test_threshold_init_hits_the_target_l0_on_the_sample():
    sae = jumprelu_sae(d_in=24, d_sae=96, target_l0=6)
    x = torch.randn(4096, 24)
    init_sae_from_data_(sae, x)
    l0 = sae.eval().encode(x).l0_per_row().float().mean().item()
    assert abs(l0 - 6) < 0.5
    constant = jumprelu_sae(threshold_init=0.25)
    init_sae_from_data_(constant, x[:, :16])
    assert torch.all(constant.threshold == 0.25)


@pytest.mark.parametrize("sparsity", ["quadratic_l0", "l0", "tanh"])
def test_every_penalty_moves_the_thresholds_and_keeps_them_non_negative(sparsity):
    sae = jumprelu_sae(sparsity=sparsity, sparsity_coef=1.0, bandwidth=0.5, threshold_init=0.05, target_l0=4)
    init_sae_from_data_(sae, torch.randn(256, sae.d_in))
    objective = make_objective(sae.cfg)
    optimizer = make_optimizer(sae, lr=1e-2)
    before = sae.threshold.detach().clone()
    for _ in range(5):
        out = training_step(sae, objective, optimizer, Batch(torch.randn(64, sae.d_in)), mse_scale=1.0)
    assert not torch.equal(sae.threshold.detach(), before)
    assert bool((sae.threshold >= 0).all())
    assert "sparsity" in out.losses and objective.steps_done == 5


def test_sparsity_warmup_ramps_lambda():
    objective = make_objective(SaeConfig.make("jumprelu", sparsity_coef=2.0, sparsity_warmup_steps=4))
    coefs = []
    for _ in range(5):
        coefs.append(objective.coef())
        objective.steps_done += 1
    assert coefs == [0.5, 1.0, 1.5, 2.0, 2.0]
    restored = make_objective(objective_cfg := SaeConfig.make("jumprelu", sparsity_warmup_steps=4))
    restored.load_state_dict(objective.state_dict(), Sae(8, objective_cfg.replace(d_sae=8)))
    assert restored.steps_done == 5


def test_quadratic_target_penalty_trains_to_the_target_l0_on_synthetic_data():
    torch.manual_seed(0)
    data = SparseDictionaryData(d_in=32, n_features=64, k_active=3, seed=0)
    # lr 3e-3 already moves these small thresholds (~0.5) fast: keep the paper's equal learning rates
    keys = {"target_l0": 3, "d_sae": 128, "normalize_activations": "none", "threshold_lr_scale": 1.0}
    sae = train_on_synthetic(SaeConfig.make("jumprelu", **keys), data, steps=300, batch_rows=256)
    x = data.sample(4096)
    code = sae.encode(x)
    fvu = ((sae.decode(code) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    l0 = code.l0_per_row().float().mean().item()
    assert abs(l0 - 3) < 0.6  # ±20 % of the target on fresh rows
    assert fvu < 0.3
    assert data.recovery_score(sae.W_dec) > 0.9


def test_save_load_and_fold_keep_the_trained_threshold_and_reconstruction(tmp_path):
    sae = jumprelu_sae()
    x = torch.randn(64, sae.d_in) * 2
    init_sae_from_data_(sae, x)
    assert isinstance(sae.threshold, torch.nn.Parameter)
    assert any(p is sae.threshold for p in sae.parameters())  # the optimiser trains it
    sae.act_scale = 0.7
    loaded = Sae.load(sae.save(tmp_path / "jr"))
    assert loaded.cfg == sae.cfg
    torch.testing.assert_close(loaded.threshold.detach(), sae.threshold.detach())
    torch.testing.assert_close(loaded.reconstruct(x), sae.eval().reconstruct(x))
    folded = fold_act_scale(loaded)
    assert folded.act_scale == 1.0
    torch.testing.assert_close(folded.reconstruct(x), loaded.reconstruct(x), rtol=1e-5, atol=1e-5)
    assert folded.cfg.params.bandwidth == pytest.approx(sae.cfg.params.bandwidth / 0.7)


def test_jumprelu_has_no_k_and_rejects_bad_keys():
    cfg = SaeConfig.make("jumprelu")
    assert cfg.param("k") is None and not hasattr(cfg.params, "k")
    with pytest.raises(ConfigError, match="k"):
        SaeConfig.make("jumprelu", k=32)
    with pytest.raises(ConfigError, match="bandwidth"):
        SaeConfig.make("jumprelu", bandwidth=0)
    assert dataclasses.replace(cfg.params, target_l0=8).target_l0 == 8
