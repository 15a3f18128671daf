"""Objectives nested over k — Multi-TopK, HierarchicalTopK, MSAE: their rows of algorithms.md §12, the per-k
metrics, and CLI train + reload."""

import json
from pathlib import Path

import pytest
import torch
from sae_checks import train_on_synthetic

import saekit.sae.methods.multik as multik
from saekit.config import SaeConfig, from_dict
from saekit.errors import ConfigError
from saekit.eval.levels import level_metrics
from saekit.sae import Sae, get_method, make_activation, make_objective
from saekit.sae.methods.multik import (
    HierarchicalTopKObjective,
    MsaeObjective,
    MultiTopKObjective,
    TopKSoftCap,
    hierarchical_loss,
    hierarchical_loss_direct,
)
from saekit.sae.methods.topk import TopK
from saekit.sae.multik_levels import (
    SOFT_CAP,
    encode_levels,
    encode_sorted,
    msae_k_levels,
    msae_level_weights,
    resolve_msae_levels,
)
from saekit.sae.objective import auxk_loss
from saekit.synthetic import SparseDictionaryData
from saekit.types import Batch

ROOT = Path(__file__).resolve().parents[1]


def make_sae(d_in=10, k=3, d_sae=40, method="topk", **kw):
    sae = Sae(d_in, SaeConfig.make(method, k=k, d_sae=d_sae, normalize_activations="none", **kw))
    with torch.no_grad():
        sae.W_enc.add_(0.2 * torch.randn_like(sae.W_enc))
        sae.b_dec.copy_(0.3 * torch.randn(d_in))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae))
    return sae


def dense_topk_recon(sae, x, k, cap=None):
    """Reference with plain autograd: dense h, a top-k mask, ReLU (and soft cap), dense decode."""
    h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    keep = torch.zeros_like(h, dtype=torch.bool).scatter_(1, torch.topk(h.detach(), k, dim=1).indices, True)
    z = torch.relu(h) * keep
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    return z @ sae.W_dec + sae.b_dec, z


def grads_of(sae, loss):
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in sae.named_parameters()}


# --------------------------------------------------------------------------------------- Multi-TopK


def test_multi_topk_loss_is_L_k_plus_L_4k_over_8_with_matching_gradients():
    sae = make_sae(k=3, d_sae=40, method="multi_topk")
    objective = make_objective(sae.cfg)
    assert isinstance(objective, MultiTopKObjective)
    x = torch.randn(17, 10)
    out = objective(sae, Batch(x), dead_mask=None, mse_scale=1.7)
    got = grads_of(sae, out.loss)
    loss_k = 1.7 * (dense_topk_recon(sae, x, 3)[0] - x).pow(2).mean()
    loss_4k = 1.7 * (dense_topk_recon(sae, x, 12)[0] - x).pow(2).mean()
    expected = loss_k + loss_4k / 8
    torch.testing.assert_close(out.loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    assert out.metrics["fvu_k3"] == pytest.approx(loss_k.item(), rel=1e-5)
    assert out.metrics["fvu_k12"] == pytest.approx(loss_4k.item(), rel=1e-5)
    ref = grads_of(sae, expected)
    for name in ("W_enc_T", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6)


def test_multi_topk_auxk_uses_the_k_level_residual():
    sae = make_sae(k=3, d_sae=40, method="multi_topk", k_aux=4, aux_coef=0.5)
    objective = make_objective(sae.cfg)
    x = torch.randn(20, 10)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.randperm(40)[:15]] = True
    out = objective(sae, Batch(x), dead_mask=dead, mse_scale=1.0)
    no_aux = objective(sae, Batch(x), dead_mask=None, mse_scale=1.0)
    dead_idx = torch.nonzero(dead)[:, 0]
    with torch.no_grad():
        x_hat_k = dense_topk_recon(sae, x, 3)[0]
        h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        aux = auxk_loss(sae, x, x - x_hat_k, h[:, dead_idx], dead_idx, 4)
    assert aux.item() > 0
    torch.testing.assert_close(out.loss.detach(), no_aux.loss.detach() + 0.5 * aux, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "method,objective",
    [
        ("multi_topk", MultiTopKObjective),
        ("hierarchical_topk", HierarchicalTopKObjective),
        ("msae", MsaeObjective),
    ],
)
def test_multi_k_objectives_need_a_per_row_topk_activation(method, objective):
    # The method fixes its encode rule: always a per-row TopK (MSAE: with the soft cap) ...
    cfg = SaeConfig.make(method, k=3, d_sae=40)
    assert isinstance(make_activation(cfg), TopK)
    assert isinstance(make_objective(cfg), objective)
    # ... and another selection rule (e.g. the batch-coupled BatchTopK) cannot be configured.
    with pytest.raises(ConfigError, match="unknown key 'sae.activation'"):
        from_dict(SaeConfig, {"method": method, "k": 3, "activation": "batchtopk"}, "sae.")


# --------------------------------------------------------------------------------- HierarchicalTopK


@pytest.mark.parametrize("chunk_elements", [1 << 22, 50])  # one chunk, and many small ones
def test_gram_identity_equals_direct_cumsum(monkeypatch, chunk_elements):
    monkeypatch.setattr(multik, "GRAM_CHUNK_ELEMENTS", chunk_elements)
    B, K, d, n = 9, 6, 13, 50
    x = torch.randn(B, d)
    W = torch.randn(n, d, requires_grad=True)
    b = torch.randn(d, requires_grad=True)
    idx = torch.stack([torch.randperm(n)[:K] for _ in range(B)])
    v = torch.rand(B, K, requires_grad=True)
    weights = torch.rand(K)
    gram = hierarchical_loss(x, b, W, idx, v, weights)
    g_gram = torch.autograd.grad(gram, [W, b, v])
    direct = hierarchical_loss_direct(x, b, W, idx, v, weights)
    g_direct = torch.autograd.grad(direct, [W, b, v])
    torch.testing.assert_close(gram, direct, rtol=1e-5, atol=0)
    for a, c in zip(g_gram, g_direct, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5 * c.abs().max().item())


def test_hierarchical_objective_matches_its_definition_and_touches_only_selected_latents():
    sae = make_sae(k=4, d_sae=40, method="hierarchical_topk")
    objective = make_objective(sae.cfg)
    assert isinstance(objective, HierarchicalTopKObjective)
    x = torch.randn(15, 10)
    out = objective(sae, Batch(x), dead_mask=None, mse_scale=0.8)
    got = grads_of(sae, out.loss)
    expected = sum(0.8 * (dense_topk_recon(sae, x, j)[0] - x).pow(2).mean() for j in range(1, 5)) / 4
    torch.testing.assert_close(out.loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    ref = grads_of(sae, expected)
    for name in ("W_enc_T", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    unselected = torch.ones(40, dtype=torch.bool)
    unselected[torch.topk(h, 4, dim=1).indices.reshape(-1)] = False
    assert unselected.any()
    assert torch.count_nonzero(got["W_enc_T"][unselected]) == 0
    assert torch.count_nonzero(got["W_dec"][unselected]) == 0


def test_sorted_supports_are_nested_and_equal_topk():
    sae = make_sae(k=6, d_sae=40)
    x = torch.randn(11, 10)
    sc = encode_sorted(sae, x, 6)
    idx = sc.code.indices.view(11, 6)
    with torch.no_grad():
        h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    for k in range(1, 6):
        for row in range(11):
            small, big = set(idx[row, :k].tolist()), set(idx[row, : k + 1].tolist())
            assert small < big
            assert small == set(torch.topk(h[row], k).indices.tolist())
    assert (sc.ranks.view(11, 6) == torch.arange(6)).all()


def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster, much faster on shared cores
    return before


def _train(cfg, data, steps=300):
    return train_on_synthetic(cfg, data, steps=steps, batch_rows=256)


def test_hierarchical_topk_fvu_is_non_increasing_in_k_after_training():
    before = _one_thread()
    try:
        data = SparseDictionaryData(d_in=24, n_features=48, k_active=4, seed=3, zipf_exponent=0.8)
        common = dict(k=6, d_sae=64, normalize_activations="none")
        hier = _train(SaeConfig.make("hierarchical_topk", **common), data)
        flat = _train(SaeConfig.make("topk", **common), data)
        x = data.sample(4096)
        h_levels = level_metrics(hier, x)  # the SAE's method decides the levels
        f_levels = level_metrics(flat, x, report=get_method("hierarchical_topk").levels)
    finally:
        torch.set_num_threads(before)
    fvu = h_levels["fvu"]
    assert h_levels["kind"] == "k" and h_levels["levels"] == [1, 2, 3, 4, 5, 6]
    assert f_levels["levels"] == h_levels["levels"]
    assert all(b <= a + 1e-6 for a, b in zip(fvu, fvu[1:], strict=False)), fvu
    assert fvu[-1] < 0.5 * fvu[0]
    assert fvu[0] < f_levels["fvu"][0]  # small budgets beat a flat TopK trained only at K
    assert h_levels["l0"] == pytest.approx([min(k, 6) for k in range(1, 7)], abs=0.2)


# --------------------------------------------------------------------------------------------- MSAE


@pytest.mark.parametrize(
    "start,n,expected",
    [
        (64, 6144, [64, 128, 256, 512, 1024, 2048, 4096, 6144]),
        (4, 32, [4, 8, 16, 32]),
        (5, 5, [5]),
        (3, 40, [3, 6, 12, 24, 40]),
    ],
)
def test_msae_k_list_doubles_and_ends_at_n(start, n, expected):
    levels = msae_k_levels(start, n)
    assert levels == expected
    assert all(b == 2 * a for a, b in zip(levels[:-2], levels[1:-1], strict=True)) and levels[-1] == n
    assert resolve_msae_levels(SaeConfig.make("msae", k=start, d_sae=n).params, n) == expected
    assert resolve_msae_levels(SaeConfig.make("msae", k=1, k_levels=(start,), d_sae=n).params, n) == expected


def test_msae_weights_are_normalised_and_rw_favours_the_smallest_k():
    for m in (1, 2, 5):
        for mode in ("uniform", "reverse"):
            assert sum(msae_level_weights(m, mode)) == pytest.approx(1.0)
    rw = msae_level_weights(4, "reverse")
    assert rw == pytest.approx([0.4, 0.3, 0.2, 0.1]) and rw[0] == max(rw)
    assert msae_level_weights(3, "uniform") == pytest.approx([1 / 3] * 3)
    with pytest.raises(ConfigError):
        msae_level_weights(3, "other")


@pytest.mark.parametrize("levels", [[2, 4, 8, 40], [3, 40], [40], [2, 5]])
def test_msae_level_uses_exactly_min_k_and_positive_count(levels):
    sae = make_sae(k=2, d_sae=40)
    x = torch.randn(25, 10) * torch.linspace(0.05, 4.0, 25).unsqueeze(1)
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.b_enc.fill_(-0.5)  # small rows have few positive entries, large rows many
        n_pos = (((x - sae.b_dec) @ sae.W_enc + sae.b_enc) > 0).sum(1)
        sc = encode_levels(sae, x, levels, cap=SOFT_CAP)
    rows = sc.code.row_ids()
    for k in levels:
        in_level = ((sc.ranks < k) & (sc.code.values > 0)).long()
        used = torch.zeros(25, dtype=torch.long).index_add_(0, rows, in_level)
        assert torch.equal(used, torch.clamp(n_pos, max=k)), k
    assert (n_pos < 8).any() and (n_pos > 8).any()


def test_msae_soft_cap_bounds_codes_and_loss_matches_definition():
    sae = make_sae(k=2, d_sae=40, method="msae", k_levels=(2,), level_weights="reverse")
    assert isinstance(sae.activation, TopKSoftCap)
    objective = make_objective(sae.cfg)
    assert isinstance(objective, MsaeObjective)
    x = 200 * torch.randn(12, 10)  # huge pre-activations: ReLU values far above 30
    out = objective(sae, Batch(x), dead_mask=None, mse_scale=0.01)
    levels = [2, 4, 8, 16, 32, 40]
    weights = msae_level_weights(len(levels), "reverse")
    recon = [dense_topk_recon(sae, x, k, cap=SOFT_CAP) for k in levels]
    expected = sum(w * 0.01 * (xh - x).pow(2).mean() for w, (xh, _) in zip(weights, recon, strict=True))
    torch.testing.assert_close(out.loss.detach(), expected.detach(), rtol=1e-5, atol=1e-5)
    assert out.losses["aux"] == 0.0
    with torch.no_grad():
        code = sae.encode(x)  # inference: msae's TopKSoftCap applies the same cap
        h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert code.values.abs().max() <= SOFT_CAP and h.max() > 10 * SOFT_CAP
    torch.testing.assert_close(code.to_dense(), recon[0][1].detach(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ per-k metrics


def test_level_metrics_per_k_matches_topk_reconstructions_over_chunks():
    sae = make_sae(k=4, d_sae=40, method="multi_topk")
    x = torch.randn(90, 10)
    chunks = [x[:40], x[40:]]  # accumulated over chunks exactly like over one tensor
    result = level_metrics(sae, chunks)
    assert result["kind"] == "k" and result["levels"] == [4, 16] and result["rows"] == 90
    assert result["method"] == "multi_topk"
    var = (x - x.mean(0)).pow(2).sum()
    with torch.no_grad():
        for j, k in enumerate([4, 16]):
            x_hat, z = dense_topk_recon(sae, x, k)
            assert result["fvu"][j] == pytest.approx(((x_hat - x).pow(2).sum() / var).item(), rel=1e-5)
            assert result["l0"][j] == pytest.approx((z > 0).sum(1).float().mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="no per-level metrics"):
        level_metrics(make_sae(k=4, d_sae=40, method="topk"), x)  # a flat method is not nested


# --------------------------------------------------------------------------------------- CLI + reload


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    from saekit.cli import main

    cache = tmp_path_factory.mktemp("tiny") / "cache"
    assert main(["collect", str(ROOT / "configs/tiny_collect.yaml"), f"out_dir={cache}"]) == 0
    return cache


@pytest.mark.parametrize("config", ["tiny_multi_topk", "tiny_hierarchical_topk", "tiny_msae"])
def test_cli_train_and_reload_give_identical_encodes(tiny_cache, tmp_path, config):
    from saekit.cli import main

    run = tmp_path / config
    args = ["train", str(ROOT / f"configs/{config}.yaml"), f"cache_dir={tiny_cache}", f"run_dir={run}"]
    assert main([*args, "progress=false", "total_tokens=2560"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["fvu"] == r["fvu"] and r["fvu"] < 10 for r in rows)
    sae = Sae.load(run / "final").eval()
    again = Sae.load(run / "final").eval()
    x = torch.randn(50, sae.d_in) * 3
    a, b = sae.encode(x), again.encode(x)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert torch.equal(sae.reconstruct(x), again.reconstruct(x))
    method = config.removeprefix("tiny_")
    assert sae.cfg.method == method
    levels = level_metrics(sae, x)
    assert levels["kind"] == "k" and len(levels["fvu"]) == len(levels["levels"])
    if method == "msae":
        assert isinstance(sae.activation, TopKSoftCap) and levels["levels"][-1] == sae.d_sae
