"""TopK selection and the TopK+AuxK objective: the TopK and AuxK rows of algorithms.md §12."""

import pytest
import torch

from saekit.config import SaeConfig
from saekit.errors import ConfigError, RunDirError
from saekit.sae import Sae, get_method, make_objective
from saekit.sae.methods.topk import TopK
from saekit.sae.objective import ReconstructionAuxK, auxk_loss, auxk_selection, mse_scale_from_sample
from saekit.train.dead import DeadLatentTracker
from saekit.train.step import densify_grads_
from saekit.types import Batch


def make_sae(d_in=10, k=4, d_sae=30, **kw):
    sae = Sae(d_in, SaeConfig.make("topk", k=k, d_sae=d_sae, normalize_activations="none", **kw))
    with torch.no_grad():  # untie and shift so every parameter matters
        sae.W_enc.add_(0.2 * torch.randn_like(sae.W_enc))
        sae.b_dec.copy_(0.5 * torch.randn(d_in))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae))
    return sae


def row_sets(code):
    return [set(code.indices[a:b].tolist()) for a, b in zip(code.offsets[:-1], code.offsets[1:], strict=True)]


# -------------------------------------------------------------------------------------------- TopK


@pytest.mark.parametrize("batch,d_in,k,d_sae", [(9, 10, 4, 30), (1, 7, 3, 19), (16, 13, 5, 37)])
def test_topk_selects_exactly_the_k_largest(batch, d_in, k, d_sae):
    sae = make_sae(d_in, k, d_sae)
    out = sae(torch.randn(batch, d_in), keep_pre_acts=True)
    h = out.pre_acts
    full_sort = torch.sort(h, dim=1, descending=True).indices[:, :k]
    assert (out.code.offsets.diff() == k).all()
    assert row_sets(out.code) == [set(r.tolist()) for r in full_sort]
    # Values are ReLU(h) at the selected entries.
    rows = out.code.row_ids()
    torch.testing.assert_close(out.code.values.detach(), torch.relu(h[rows, out.code.indices]))


def test_nnz_at_most_k_and_exactly_k_when_all_positive():
    sae = make_sae()
    x = torch.randn(20, 10)
    l0 = sae.encode(x).l0_per_row()
    assert (l0 <= 4).all()
    with torch.no_grad():
        sae.b_enc.fill_(-1.5)  # most pre-activations negative: rows keep fewer than k non-zeros
    out = sae(x, keep_pre_acts=True)
    assert (out.code.l0_per_row() < 4).any()
    selected_h = out.pre_acts[out.code.row_ids(), out.code.indices]
    assert (selected_h < 0).any()  # ReLU after selection: negative selected entries become exactly 0
    assert torch.equal(out.code.values[selected_h <= 0], torch.zeros(int((selected_h <= 0).sum())))
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive
    assert (sae.encode(x).l0_per_row() == 4).all()


def test_latents_outside_the_selection_get_zero_gradient():
    sae = make_sae()
    x = torch.randn(3, 10)
    out = sae(x)
    (out.x_hat - x).pow(2).sum().backward()
    selected = torch.zeros(30, dtype=torch.bool)
    selected[out.code.indices[out.code.values > 0]] = True
    unselected = torch.ones(30, dtype=torch.bool)
    unselected[out.code.indices] = False
    assert unselected.sum() > 0
    assert torch.count_nonzero(sae.W_enc_T.grad.t()[:, unselected]) == 0
    assert torch.count_nonzero(sae.b_enc.grad[unselected]) == 0
    assert torch.count_nonzero(sae.W_dec.grad[unselected]) == 0
    assert (sae.W_enc_T.grad.t()[:, selected].abs().sum(0) > 0).all()
    assert (sae.W_dec.grad[selected].abs().sum(1) > 0).all()


def test_sae_gradients_match_a_dense_reference():
    sae = make_sae()
    x = torch.randn(6, 10)
    out = sae(x)
    (out.x_hat - x).pow(2).sum().backward()
    got = [p.grad.clone() for p in (sae.W_enc_T, sae.b_enc, sae.W_dec, sae.b_dec)]
    sae.zero_grad()
    h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    mask = torch.zeros_like(h).scatter(1, out.code.indices.view(6, 4), 1.0)
    x_hat = (torch.relu(h) * mask) @ sae.W_dec + sae.b_dec
    (x_hat - x).pow(2).sum().backward()
    for g, p in zip(got, (sae.W_enc_T, sae.b_enc, sae.W_dec, sae.b_dec), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------- AuxK


def run_objective(sae, x, dead, k_aux=6, aux_coef=1 / 32, mse_scale=1.0):
    sae.zero_grad(set_to_none=True)
    # The objective reads k_aux / aux_coef from its params: build it from the SAE's config with those keys.
    objective = ReconstructionAuxK(sae.cfg.replace(k_aux=k_aux, aux_coef=aux_coef).params)
    out = objective(sae, Batch(x), dead_mask=dead, mse_scale=mse_scale)
    out.loss.backward()
    return out, [p.grad.clone() for p in (sae.W_enc_T, sae.b_enc, sae.W_dec, sae.b_dec)]


def test_auxk_is_zero_and_free_when_nothing_is_dead():
    sae, x = make_sae(), torch.randn(12, 10)
    none_dead = torch.zeros(30, dtype=torch.bool)
    for dead in (None, none_dead):
        out, grads = run_objective(sae, x, dead)
        assert out.losses["aux"] == 0.0 and out.losses["total"] == out.losses["main"]
        _, ref = run_objective(sae, x, dead, aux_coef=0.0)
        for g, r in zip(grads, ref, strict=True):
            assert torch.equal(g, r)


@pytest.mark.parametrize("n_dead,k_aux", [(5, 3), (5, 8), (12, 12)])
def test_auxk_selects_only_dead_latents_min_kaux_ndead_per_row(n_dead, k_aux):
    sae, x = make_sae(), torch.randn(7, 10)
    dead_idx = torch.randperm(30)[:n_dead].sort().values
    out = sae(x, aux_columns=dead_idx, keep_pre_acts=True)
    sel = auxk_selection(out.aux_pre_acts, dead_idx, k_aux, sae.d_sae)
    expect = min(k_aux, n_dead)
    assert (sel.offsets.diff() == expect).all()
    assert set(sel.indices.tolist()) <= set(dead_idx.tolist())
    masked = out.pre_acts.clone()
    live = torch.ones(30, dtype=torch.bool)
    live[dead_idx] = False
    masked[:, live] = -torch.inf
    ref = torch.sort(masked, dim=1, descending=True).indices[:, :expect]
    got = [set(sel.indices[a:b].tolist()) for a, b in zip(sel.offsets[:-1], sel.offsets[1:], strict=True)]
    assert got == [set(r.tolist()) for r in ref]


@pytest.mark.parametrize("n_dead,k_aux", [(8, 3), (8, 1), (5, 9)])
def test_auxk_dense_and_sparse_paths_agree(n_dead, k_aux):
    sae, x = make_sae(), torch.randn(16, 10)
    dead_idx = torch.randperm(30)[:n_dead]
    results = []
    for dense in (True, False):
        sae.zero_grad(set_to_none=True)
        out = sae(x, aux_columns=dead_idx)
        loss = auxk_loss(sae, x, x - out.x_hat, out.aux_pre_acts, dead_idx, k_aux, dense=dense)
        loss.backward()
        results.append(
            [loss.detach()] + [p.grad.to_dense() for p in (sae.W_enc_T, sae.b_enc, sae.W_dec, sae.b_dec)]
        )
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_auxk_loss_value_uses_no_decoder_bias():
    sae, x = make_sae(), torch.randn(16, 10)
    dead = torch.zeros(30, dtype=torch.bool)
    dead[torch.randperm(30)[:8]] = True
    out, _ = run_objective(sae, x, dead, k_aux=3)
    with torch.no_grad():
        dense = sae(x, keep_pre_acts=True)
        h = dense.pre_acts.masked_fill(~dead, -torch.inf)
        vals, idx = torch.topk(h, 3, dim=1)
        z = torch.zeros_like(h).scatter(1, idx, torch.relu(vals))
        e = x - dense.x_hat
        denom = (e - e.mean(0)).pow(2).mean()
        expected = ((z @ sae.W_dec - e).pow(2).mean() / denom).item()
        with_bias = ((z @ sae.W_dec + sae.b_dec - e).pow(2).mean() / denom).item()
    assert out.losses["aux"] == pytest.approx(expected, rel=1e-5)
    assert abs(with_bias - expected) > 1e-2 * expected  # the check can tell the two apart
    assert out.losses["total"] == pytest.approx(out.losses["main"] + expected / 32, rel=1e-5)


@pytest.mark.parametrize("dense", [True, False])
def test_auxk_gradient_reaches_only_selected_dead_latents_including_the_encoder(dense):
    sae, x = make_sae(), torch.randn(16, 10)
    dead_idx = torch.tensor([2, 5, 11, 17, 23, 29])
    out = sae(x, aux_columns=dead_idx)
    loss = auxk_loss(sae, x, x - out.x_hat, out.aux_pre_acts, dead_idx, k_aux=2, dense=dense)
    sae.zero_grad(set_to_none=True)
    loss.backward()
    densify_grads_(sae)  # the AuxK term alone leaves its row lookups' gradients sparse
    live = torch.ones(30, dtype=torch.bool)
    live[dead_idx] = False
    assert torch.count_nonzero(sae.W_enc_T.grad.t()[:, live]) == 0
    assert torch.count_nonzero(sae.b_enc.grad[live]) == 0
    assert torch.count_nonzero(sae.W_dec.grad[live]) == 0
    # Peers' bug to avoid: an AuxK that gives the encoder no gradient.
    assert sae.W_enc_T.grad.t()[:, dead_idx].abs().sum() > 0 and sae.b_enc.grad[dead_idx].abs().sum() > 0
    assert sae.W_dec.grad[dead_idx].abs().sum() > 0


def test_nan_auxk_becomes_zero_with_finite_gradients():
    sae = make_sae()
    x = torch.randn(1, 10)  # one row: the residual's batch variance is 0, so the ratio is NaN
    dead = torch.zeros(30, dtype=torch.bool)
    dead[:10] = True
    out, grads = run_objective(sae, x, dead)
    assert out.losses["aux"] == 0.0
    assert all(torch.isfinite(g).all() for g in grads)


def test_aux_settings_default_to_the_sae_config_and_batch_is_used_as_given():
    dead = torch.zeros(30, dtype=torch.bool)
    dead[:12] = True
    x = torch.randn(12, 10)
    no_aux = make_sae(k_aux=0)
    no_aux.act_scale = 3.0  # batches arrive already normalised: the objective must not rescale
    out = make_objective(no_aux.cfg)(no_aux, Batch(x), dead_mask=dead, mse_scale=1.0)
    assert out.losses["aux"] == 0.0
    with torch.no_grad():
        assert out.metrics["mse"] == pytest.approx((no_aux(x).x_hat - x).pow(2).mean().item(), rel=1e-5)
    torch.manual_seed(1)
    sae = make_sae(k_aux=3, aux_coef=0.5)
    out = make_objective(sae.cfg)(sae, Batch(x), dead_mask=dead, mse_scale=1.0)
    assert out.losses["aux"] > 0
    assert out.losses["total"] == pytest.approx(out.losses["main"] + 0.5 * out.losses["aux"], rel=1e-5)


def test_step_output_metrics_and_fired():
    sae, x = make_sae(), torch.randn(12, 10)
    mse_scale = mse_scale_from_sample(x)
    out, _ = run_objective(sae, x, None, mse_scale=mse_scale)
    with torch.no_grad():
        res = sae(x)
        mse = (res.x_hat - x).pow(2).mean().item()
    assert out.metrics["mse"] == pytest.approx(mse, rel=1e-5)
    assert out.metrics["fvu"] == pytest.approx(mse * mse_scale, rel=1e-5)
    assert out.metrics["fvu_batch"] == pytest.approx(mse * mse_scale, rel=1e-4)  # same sample: same x̄
    assert out.metrics["l0"] == pytest.approx(res.code.l0_per_row().float().mean().item())
    expected_fired = torch.zeros(30, dtype=torch.bool)
    expected_fired[res.code.indices[res.code.values > 1e-3]] = True
    assert torch.equal(out.fired, expected_fired)


def test_objective_registry():
    # The method declares its objective: TopK trains TopK + AuxK, a fresh object per run.
    method = get_method("topk")
    assert method.objective is ReconstructionAuxK and method.activation is TopK
    objective = make_objective(SaeConfig())  # SaeConfig() is TopK with defaults
    assert type(objective) is ReconstructionAuxK and objective.params == SaeConfig().params
    assert make_objective(SaeConfig()) is not objective
    with pytest.raises(ConfigError, match="did you mean 'topk'"):
        get_method("topk_aux")


# ------------------------------------------------------------------------------------ dead counter


def test_dead_counter_resets_on_fire_and_grows_by_tokens():
    tracker = DeadLatentTracker(5, dead_tokens=100)
    assert not tracker.dead_mask().any()
    fired = torch.tensor([True, False, False, True, False])
    tracker.update(fired, n_tokens=60)
    assert tracker.tokens_since_fired.tolist() == [0, 60, 60, 0, 60]
    tracker.update(torch.tensor([False, True, False, False, False]), n_tokens=40)
    assert tracker.tokens_since_fired.tolist() == [40, 0, 100, 40, 100]
    assert tracker.dead_mask().tolist() == [False, False, True, False, True]
    assert tracker.dead_fraction() == pytest.approx(0.4)
    restored = DeadLatentTracker(5, dead_tokens=100)
    restored.load_state_dict(tracker.state_dict())
    assert torch.equal(restored.tokens_since_fired, tracker.tokens_since_fired)
    with pytest.raises(RunDirError, match="different SAE width"):
        DeadLatentTracker(6, 100).load_state_dict(tracker.state_dict())


def test_log_window_reports_revivals_and_dense_fraction_then_restarts():
    tracker = DeadLatentTracker(4, dead_tokens=10)
    tracker.update(torch.tensor([True, True, False, False]), n_tokens=10)  # latents 2, 3 now dead
    assert tracker.window_summary() == {"revived": 0.0}  # no counts given: no dense fraction
    # New window: 2 and 3 start dead; 2 fires again (revived). Latent 0 fires on 9 of 20 rows (dense at
    # 10%), latent 1 on 1 of 20 (not dense), latent 2 on 2 of 20 (10%: not above the threshold).
    tracker.update(torch.tensor([True, True, True, False]), 10, counts=torch.tensor([5, 1, 2, 0]))
    tracker.update(torch.tensor([True, False, False, False]), 10, counts=torch.tensor([4, 0, 0, 0]))
    summary = tracker.window_summary(dense_frequency=0.1)
    assert summary == {"revived": 1.0, "dense_fraction": pytest.approx(0.25)}
    assert tracker.window_summary() == {"revived": 0.0}  # a fresh window: nothing happened in it


def test_permute_moves_counters_and_window_statistics():
    tracker = DeadLatentTracker(3, dead_tokens=5)
    tracker.update(torch.tensor([False, True, False]), 5)  # 0 and 2 dead
    tracker.window_summary()
    tracker.update(torch.tensor([True, False, False]), 4, counts=torch.tensor([3, 0, 0]))  # 0 revived
    tracker.permute_(torch.tensor([2, 0, 1]))  # new 0 = old 2, new 1 = old 0, new 2 = old 1
    assert tracker.tokens_since_fired.tolist() == [9, 0, 4]
    assert tracker.window_counts.tolist() == [0, 3, 0]
    assert tracker.window_dead_at_start.tolist() == [True, True, False]
    summary = tracker.window_summary(dense_frequency=0.5)
    assert summary == {"revived": 1.0, "dense_fraction": pytest.approx(1 / 3)}


def test_dead_latents_from_training_feed_auxk():
    sae, x = make_sae(), torch.randn(12, 10)
    tracker = DeadLatentTracker(30, dead_tokens=20)
    for _ in range(2):
        out, _ = run_objective(sae, x, tracker.dead_mask())
        tracker.update(out.fired, n_tokens=12)
    assert tracker.dead_mask().sum().item() == 30 - out.fired.sum().item() > 0
    out, _ = run_objective(sae, x, tracker.dead_mask())
    assert out.losses["aux"] > 0 and out.metrics["n_dead"] == float(tracker.dead_mask().sum())
