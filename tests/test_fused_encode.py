"""The fused encoder (GEMM tiles folded into the selection) selects exactly what the dense path selects,
gives the same gradients, and the per-machine path choice is measured once, cached and overridable."""

import json

import pytest
import torch

from saekit.config import SaeConfig
from saekit.errors import ConfigError
from saekit.sae import Sae, make_objective
from saekit.sae import encode_path as ep
from saekit.sae.fused_encode import Tiling, fused_row_topk, fused_threshold
from saekit.sae.methods.batchtopk import threshold_selection
from saekit.sae.row_topk import row_topk
from saekit.train.step import FixedDeadMask, make_optimizer, training_step
from saekit.types import Batch

SMALL = Tiling(rows=16, latents=128)  # ragged tiles on purpose: 16 ∤ 30 rows, 128 ∤ 400 latents
D_IN = 32


@pytest.fixture(autouse=True)
def _fresh_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(ep.ENV_VAR, raising=False)  # conftest pins dense; these tests choose or measure
    monkeypatch.setattr(ep, "TILING", SMALL)
    yield
    ep.set_encode_path(None)


def weights(d_in=D_IN, d_sae=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(d_sae, d_in, generator=gen), torch.randn(d_sae, generator=gen)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_fused_topk_selects_what_the_dense_topk_selects(k):
    W_T, b = weights()
    x = torch.randn(30, D_IN)
    h = torch.addmm(b, x, W_T.t())
    aux_cols = torch.tensor([0, 3, 95, 96, 97, 250, 399])
    values, indices, aux = fused_row_topk(x, W_T, b, k, SMALL, aux_cols)
    want_v, want_i = row_topk(h, k)
    order, want_order = values.argsort(1), want_v.argsort(1)
    assert torch.equal(indices.gather(1, order), want_i.gather(1, want_order))  # randn: no ties
    # Values: the same dot products; equal to the last bit wherever the BLAS sums a tile as it sums the
    # whole GEMM (so on this project's machines), hence the tolerance of a few ulps only.
    torch.testing.assert_close(values.gather(1, order), want_v.gather(1, want_order), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(aux, h[:, aux_cols], rtol=1e-6, atol=1e-6)


def test_ties_keep_the_values_multiset():
    W_T, b = weights(d_sae=192)
    x = torch.randn(9, D_IN)
    W_T[100:] = W_T[:92]  # every column ≥ 100 duplicates one below: tied pairs straddle the tiles
    b[100:] = b[:92]
    h = torch.addmm(b, x, W_T.t())
    values, indices, _ = fused_row_topk(x, W_T, b, 12, SMALL)
    want = torch.topk(h, 12, dim=1).values
    torch.testing.assert_close(values.sort(1, descending=True).values, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.gather(1, indices), values, rtol=1e-6, atol=1e-6)
    assert all(row.unique().numel() == 12 for row in indices)


def test_fused_threshold_equals_the_dense_rule_in_order():
    W_T, b = weights()
    x = torch.randn(30, D_IN)
    theta = torch.rand(400) * 2
    rows, cols, vals = fused_threshold(x, W_T, b, theta, SMALL)
    want = threshold_selection(torch.addmm(b, x, W_T.t()), theta)
    assert torch.equal(rows, want.row_ids()) and torch.equal(cols, want.indices)
    torch.testing.assert_close(vals, want.values, rtol=1e-6, atol=1e-6)


def steps_on_both_paths(method, dead_fraction, steps=2, **keys):
    """Same SAE trained on both paths; returns the per-step codes and final parameters of each."""
    torch.manual_seed(1)
    x = torch.randn(48, D_IN)
    dead = torch.zeros(400, dtype=torch.bool)
    dead[torch.randperm(400)[: int(dead_fraction * 400)]] = True
    results = {}
    for path in ("dense", "fused"):
        ep.set_encode_path(path)
        torch.manual_seed(2)
        cfg = SaeConfig.make(method, k=6, d_sae=400, normalize_activations="none", **keys)
        sae = Sae(D_IN, cfg)
        objective, optimizer = make_objective(cfg), make_optimizer(sae, lr=1e-3)
        codes = []
        for _ in range(steps):
            out = training_step(
                sae, objective, optimizer, Batch(acts=x), mse_scale=1.0, tracker=FixedDeadMask(dead)
            )
            codes.append((out.losses["total"], out.losses["aux"]))
        sae.eval()
        codes.append(sae.encode_normalized(x))
        results[path] = (codes, {n: p.detach().clone() for n, p in sae.named_parameters()}, sae)
    return results


@pytest.mark.parametrize(
    "method,dead", [("topk", 0.0), ("topk", 0.05), ("topk", 0.5), ("batchtopk", 0.05), ("mutual_choice", 0.0)]
)
def test_training_steps_are_identical_on_both_paths(method, dead):
    res = steps_on_both_paths(method, dead)
    (codes_d, params_d, sae_d), (codes_f, params_f, sae_f) = res["dense"], res["fused"]
    # loss terms (AuxK included) step by step, parameters, learned threshold: equal up to GEMM rounding
    torch.testing.assert_close(codes_f[:-1], codes_d[:-1], rtol=1e-5, atol=1e-6)
    for name in params_d:
        torch.testing.assert_close(params_f[name], params_d[name], rtol=1e-5, atol=1e-6, msg=name)
    if sae_d.threshold is not None:
        torch.testing.assert_close(sae_d.threshold, sae_f.threshold, rtol=1e-6, atol=1e-6)
    code_d, code_f = codes_d[-1], codes_f[-1]  # inference (threshold rule for batchtopk)
    assert torch.equal(code_d.offsets, code_f.offsets)
    assert torch.equal(code_d.indices, code_f.indices)
    torch.testing.assert_close(code_f.values, code_d.values, rtol=1e-5, atol=1e-6)


def test_the_fused_path_never_allocates_a_dense_h(monkeypatch):
    cfg = SaeConfig.make("topk", k=4, d_sae=400, normalize_activations="none")
    sae = Sae(D_IN, cfg).train()
    ep.set_encode_path("fused")
    monkeypatch.setattr(Sae, "dense_pre_acts", lambda *a, **kw: pytest.fail("dense h built"))
    out = sae(torch.randn(30, D_IN))
    assert out.code.indices.numel() == 30 * 4


def test_the_choice_is_measured_once_then_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(ep, "MIN_WORK", 1)
    cfg = SaeConfig.make("topk", k=4, d_sae=400, normalize_activations="none")
    sae = Sae(D_IN, cfg)
    x = torch.randn(30, D_IN)
    sae.encode_normalized(x)
    cache = json.loads((tmp_path / "cache" / ep.CACHE_NAME).read_text())
    ((key, entry),) = cache.items()
    assert ep.cpu_capability() in key and "d_sae 400 k 4" in key
    assert entry["path"] in ("dense", "fused") and entry["dense_s"] > 0 and entry["fused_s"] > 0
    # A new process reads the cache: forget the in-process memo, make measuring fail, encode again.
    ep._decided.clear()
    monkeypatch.setattr(ep, "_measure", lambda *a: pytest.fail("measured twice"))
    sae.encode_normalized(x)
    assert ep.describe_last_choice().startswith(f"encoder path: {entry['path']} (cached in")


def test_override_by_environment_and_bad_values(monkeypatch):
    monkeypatch.setenv(ep.ENV_VAR, "fused")
    assert ep.requested_path() == "fused"
    monkeypatch.setenv(ep.ENV_VAR, "fast")
    with pytest.raises(ConfigError, match="SAEKIT_ENCODE_PATH='fast'.*auto, dense, fused"):
        ep.requested_path()
    with pytest.raises(ConfigError, match="encode path"):
        ep.set_encode_path("quick")
