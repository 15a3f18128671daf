"""aux_zipf (provisional): the aux_zipf row of algorithms.md §12, state round trip, CLI train + reload."""

import json
from pathlib import Path

import pytest
import torch

from saekit.cli import main
from saekit.config import SaeConfig
from saekit.errors import ConfigError, RunDirError
from saekit.sae import Sae, get_method, make_objective
from saekit.sae.methods.aux_zipf import (
    AuxZipfObjective,
    underutilised_latents,
    weighted_auxk_loss,
    zipf_target,
)
from saekit.sae.objective import ReconstructionAuxK, auxk_loss
from saekit.types import Batch

ROOT = Path(__file__).resolve().parents[1]


def make_sae(activation="topk", d_in=10, k=4, d_sae=30, **kw):
    """An aux_zipf SAE whose selection rule is `activation`."""
    cfg = SaeConfig.make(
        "aux_zipf", activation=activation, k=k, d_sae=d_sae, normalize_activations="none", **kw
    )
    sae = Sae(d_in, cfg)
    with torch.no_grad():  # untie and shift so every parameter matters
        sae.W_enc.add_(0.2 * torch.randn_like(sae.W_enc))
        sae.b_dec.copy_(0.5 * torch.randn(d_in))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae))
    return sae


def grads(sae):
    return [p.grad.to_dense() for p in (sae.W_enc_T, sae.b_enc, sae.W_dec, sae.b_dec)]


# ------------------------------------------------------------------------------------------ target


@pytest.mark.parametrize(
    "d_sae,k,s", [(30, 4, 1.0), (16384, 32, 1.0), (100, 10, 0.0), (50, 50, 1.0), (64, 3, 2.0)]
)
def test_zipf_target_sums_to_k_is_capped_at_one_and_non_increasing(d_sae, k, s):
    target = zipf_target(d_sae, k, s)
    assert target.dtype == torch.float64 and target.shape == (d_sae,)
    assert target.sum().item() == pytest.approx(k, rel=1e-12)
    assert (target > 0).all() and (target <= 1).all()
    assert (target.diff() <= 1e-15).all()
    uncapped = target < 1
    ranks = torch.arange(1, d_sae + 1, dtype=torch.float64)[uncapped]
    c = target[uncapped] * ranks.pow(s)
    torch.testing.assert_close(c, c[:1].expand_as(c))  # Zipf shape c·r^-s below the cap


def test_zipf_target_caps_the_head_when_c_would_exceed_one():
    target = zipf_target(16384, 32, 1.0)
    assert target[0] == 1.0 and target[1] == 1.0  # c = 32 / H_16384 ≈ 3.1 without the cap
    plain = zipf_target(30, 1, 1.0)  # c = 1 / H_30 < 1: no cap, exact Zipf
    harmonic = torch.arange(1, 31, dtype=torch.float64).reciprocal()
    torch.testing.assert_close(plain, harmonic / harmonic.sum())
    with pytest.raises(ConfigError, match="zipf_exponent"):
        zipf_target(30, 4, -1.0)


def test_underutilised_set_and_weights_follow_the_definition():
    freq = torch.tensor([0.5, 0.01, 0.3, 0.0, 0.2, 0.02], dtype=torch.float64)
    target = zipf_target(6, 1.5, 1.0)
    dead = torch.tensor([False, False, False, False, False, True])
    idx, weights = underutilised_latents(freq, target, tau=0.5, dead_mask=dead)
    ranks = {lat: r for r, lat in enumerate(torch.argsort(freq, descending=True).tolist())}
    expect_idx, expect_w = [], []
    for i in range(6):
        f_star = target[ranks[i]].item()
        if freq[i] < 0.5 * f_star or dead[i]:
            expect_idx.append(i)
            expect_w.append(1.0 if dead[i] else min(1.0, max(0.0, 1 - freq[i].item() / f_star)))
    assert idx.tolist() == expect_idx and 5 in expect_idx and 0 not in expect_idx
    torch.testing.assert_close(weights, torch.tensor(expect_w, dtype=torch.float32))
    assert ((weights >= 0) & (weights <= 1)).all() and (weights < 1).any()


# -------------------------------------------------------------------------------------- aux term


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("n_aux,k_aux", [(8, 3), (5, 9)])
def test_weighted_auxk_with_unit_weights_is_exactly_auxk(dense, n_aux, k_aux):
    sae, x = make_sae(), torch.randn(16, 10)
    idx = torch.randperm(30)[:n_aux]
    results = []
    for fn in ("auxk", "weighted"):
        sae.zero_grad(set_to_none=True)
        out = sae(x, aux_columns=idx)
        if fn == "auxk":
            loss = auxk_loss(sae, x, x - out.x_hat, out.aux_pre_acts, idx, k_aux, dense=dense)
        else:
            ones = torch.ones(n_aux)
            loss = weighted_auxk_loss(sae, x, x - out.x_hat, out.aux_pre_acts, idx, ones, k_aux, dense=dense)
        loss.backward()
        results.append([loss.detach(), *grads(sae)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_weighted_auxk_dense_and_sparse_agree_and_weights_matter():
    sae, x = make_sae(), torch.randn(16, 10)
    idx = torch.tensor([2, 5, 11, 17, 23, 29])
    weights = torch.tensor([1.0, 0.5, 0.0, 0.75, 0.9, 0.6])
    results = []
    for dense in (True, False):
        sae.zero_grad(set_to_none=True)
        out = sae(x, aux_columns=idx)
        loss = weighted_auxk_loss(sae, x, x - out.x_hat, out.aux_pre_acts, idx, weights, 2, dense=dense)
        loss.backward()
        results.append([loss.detach(), *grads(sae)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    w_enc_grad = results[1][1].t()  # stored latent-major (W_enc_T)
    assert torch.count_nonzero(w_enc_grad[:, 11]) == 0  # weight 0: no aux gradient for that latent
    outside = torch.ones(30, dtype=torch.bool)
    outside[idx] = False
    assert torch.count_nonzero(w_enc_grad[:, outside]) == 0 and w_enc_grad[:, idx].abs().sum() > 0
    out = sae(x, aux_columns=idx)
    unit = weighted_auxk_loss(sae, x, x - out.x_hat, out.aux_pre_acts, idx, torch.ones(6), 2)
    assert abs(unit.item() - results[0][0].item()) > 1e-4


# -------------------------------------------------------------------------------------- objective


def test_objective_reduces_exactly_to_topk_auxk_when_underutilised_equals_dead():
    sae, x = make_sae(k_aux=3), torch.randn(16, 10)
    objective = make_objective(sae.cfg)
    assert isinstance(objective, AuxZipfObjective)
    dead_idx = torch.tensor([3, 9, 14, 20, 27])
    dead = torch.zeros(30, dtype=torch.bool)
    dead[dead_idx] = True
    # Live latents exactly at their targets (never underutilised), dead ones at frequency 0 (weight 1).
    target = zipf_target(30, 4, 1.0)
    freq = torch.zeros(30, dtype=torch.float64)
    freq[~dead] = target[: int((~dead).sum())]
    objective.load_state_dict({"freq_ema": freq.tolist()}, sae)
    idx, weights = objective.aux_set(sae, dead)
    assert torch.equal(idx, dead_idx) and torch.equal(weights, torch.ones(5))
    sae.zero_grad(set_to_none=True)
    ours = objective(sae, Batch(x), dead_mask=dead, mse_scale=1.3)
    ours.loss.backward()
    ours_grads = grads(sae)
    sae.zero_grad(set_to_none=True)
    ref = ReconstructionAuxK(sae.cfg.params)(sae, Batch(x), dead_mask=dead, mse_scale=1.3)  # TopK + AuxK
    ref.loss.backward()
    assert ours.losses["aux"] > 0
    for key in ("main", "aux", "total"):
        assert ours.losses[key] == pytest.approx(ref.losses[key], rel=1e-6)
    for a, b in zip(ours_grads, grads(sae), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert torch.equal(ours.fired, ref.fired)


def observed_frequency(sae, x):
    code = sae.encode(x, training=True)  # training selection does not depend on the threshold
    return torch.bincount(code.indices[code.values > 1e-3], minlength=sae.d_sae).double() / x.shape[0]


def test_frequency_ema_first_sets_then_averages_and_round_trips_exactly():
    sae = make_sae("mutual_choice")
    objective = AuxZipfObjective(sae.cfg.params)
    objective.freq_rate = 0.25
    x1, x2 = torch.randn(16, 10), torch.randn(16, 10)
    assert objective.freq is None
    out1 = objective(sae, Batch(x1), dead_mask=None, mse_scale=1.0)
    f1 = objective.freq.clone()
    assert f1.dtype == torch.float64 and torch.equal(f1, observed_frequency(sae, x1))
    assert f1.sum().item() == pytest.approx(out1.metrics["l0"], rel=1e-6)  # Σ f = mean L0
    objective(sae, Batch(x2), dead_mask=None, mse_scale=1.0)
    torch.testing.assert_close(objective.freq, 0.75 * f1 + 0.25 * observed_frequency(sae, x2))
    saved = json.loads(json.dumps(objective.state_dict()))  # what a trainer_state.json would hold
    fresh = AuxZipfObjective(sae.cfg.params)
    fresh.load_state_dict(saved, sae)
    assert torch.equal(fresh.freq, objective.freq)
    for a, b in zip(fresh.aux_set(sae, None), objective.aux_set(sae, None), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(RunDirError, match="different SAE"):
        fresh.load_state_dict(saved, make_sae(d_sae=31))


def test_default_rate_counts_tokens_and_state_is_per_run():
    a, b = make_sae(dead_tokens=64), make_sae(dead_tokens=64)
    objective, other = make_objective(a.cfg), make_objective(b.cfg)
    assert objective is not other  # one objective (and its state) per training run
    x1, x2 = torch.randn(16, 10), torch.randn(16, 10)
    objective(a, Batch(x1), dead_mask=None, mse_scale=1.0)
    assert other.freq is None  # another run (another SAE) starts from scratch
    f1 = objective.freq.clone()
    objective(a, Batch(x2), dead_mask=None, mse_scale=1.0)
    rate = 16 / 64  # batch tokens / dead_tokens
    torch.testing.assert_close(objective.freq, (1 - rate) * f1 + rate * observed_frequency(a, x2))


def test_underutilised_latents_get_aux_gradient_and_metrics_are_reported():
    sae, x = make_sae(k_aux=4, aux_coef=1.0), torch.randn(16, 10)
    objective = make_objective(sae.cfg)
    objective(sae, Batch(x), dead_mask=None, mse_scale=1.0)  # first step: only frequencies
    idx, weights = objective.aux_set(sae, None)
    assert 0 < idx.numel() < 30 and ((weights >= 0) & (weights <= 1)).all()
    sae.zero_grad(set_to_none=True)
    out = objective(sae, Batch(x), dead_mask=None, mse_scale=1.0)
    assert out.losses["aux"] > 0 and out.metrics["n_underutilised"] == idx.numel()
    assert out.losses["total"] == pytest.approx(out.losses["main"] + out.losses["aux"], rel=1e-5)
    assert get_method("aux_zipf").objective is AuxZipfObjective and isinstance(objective, AuxZipfObjective)


# ---------------------------------------------------------------------------------- CLI end to end


def test_cli_trains_mutual_choice_with_aux_zipf_and_reloads(tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert (
        main(["collect", str(ROOT / "configs/tiny_collect.yaml"), f"out_dir={cache}", "max_tokens=2000"]) == 0
    )
    assert main(
        ["train", str(ROOT / "configs/tiny_aux_zipf.yaml"), f"cache_dir={cache}", f"run_dir={run}",
         "progress=false", "total_tokens=2048", "checkpoint_every=4", "norm_estimation_tokens=1000",
         "shuffle_buffer_tokens=1000", "sae.dead_tokens=512"]
    ) == 0  # fmt: skip
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("n_underutilised" in r for r in records) and records[-1]["n_underutilised"] > 0
    assert any(r["aux"] > 0 for r in records)
    sae = Sae.load(run / "final").eval()
    assert sae.cfg.method == "aux_zipf" and sae.cfg.params.activation == "mutual_choice"
    assert (sae.threshold > 0).all()
    x = torch.randn(64, sae.d_in) * sae.b_dec.norm() / sae.d_in**0.5 + sae.b_dec
    code = sae.encode(x)
    again = Sae.load(sae.save(tmp_path / "resaved")).eval().encode(x)
    assert torch.equal(code.indices, again.indices) and torch.equal(code.values, again.values)
