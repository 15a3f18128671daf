"""Sae module: shapes and layout, decoder constraint, init, activation scale, export and save/load."""

import json

import pytest
import torch

from saekit.config import SaeConfig
from saekit.errors import ConfigError, DataError, RunDirError
from saekit.sae import (
    METHODS,
    Sae,
    constrained_adam_step,
    estimate_act_scale,
    geometric_median,
    get_method,
    init_sae_from_data_,
)
from saekit.synthetic import SparseDictionaryData


def tiny_sae(d_in=12, k=3, d_sae=40, method="topk", **kw):
    return Sae(d_in, SaeConfig.make(method, k=k, d_sae=d_sae, **kw))


def test_parameter_layout_and_init_is_tied_unit_norm():
    sae = tiny_sae()
    assert sae.W_enc.shape == (12, 40) and sae.W_dec.shape == (40, 12)
    assert sae.b_enc.shape == (40,) and sae.b_dec.shape == (12,)
    assert all(p.dtype == torch.float32 for p in sae.parameters())
    assert sae.threshold is None
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(40))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())
    # Contiguous storage (see the Sae docstring): fused Adam mis-handles strided parameters.
    assert all(p.is_contiguous() for p in sae.parameters())
    x = torch.randn(4, 12)
    (sae(x).x_hat - x).pow(2).sum().backward()
    # The encoder is stored latent-major and its sparse gradient arrives in that layout (no transpose copy).
    assert sae.W_enc_T.shape == (40, 12) and sae.W_enc_T.grad.stride() == sae.W_enc_T.stride()
    assert sae.W_enc.data_ptr() == sae.W_enc_T.data_ptr()


def test_forward_shapes_and_code_is_csr_with_k_per_row():
    sae = tiny_sae()
    x = torch.randn(6, 12)
    out = sae(x, keep_pre_acts=True)
    assert out.x_hat.shape == (6, 12)
    assert out.code.offsets.tolist() == list(range(0, 7 * 3, 3))
    assert out.pre_acts.shape == (6, 40) and out.aux_pre_acts is None
    # decode(encode(x)) equals the dense formula.
    z = out.code.to_dense()
    torch.testing.assert_close(out.x_hat, z @ sae.W_dec + sae.b_dec, rtol=1e-5, atol=1e-5)


def test_forward_returns_only_requested_aux_columns():
    sae = tiny_sae()
    x = torch.randn(5, 12)
    cols = torch.tensor([3, 17, 39])
    out = sae(x, aux_columns=cols, keep_pre_acts=True)
    torch.testing.assert_close(out.aux_pre_acts, out.pre_acts[:, cols])
    assert not out.aux_pre_acts.requires_grad


def test_k_larger_than_d_sae_is_a_config_error():
    with pytest.raises(ConfigError, match="k=8 exceeds d_sae=4"):
        Sae(4, SaeConfig.make("topk", k=8, expansion_factor=1))


def test_unknown_method_suggests_close_name():
    with pytest.raises(ConfigError, match="did you mean 'topk'"):
        get_method("topkk")
    with pytest.raises(ConfigError, match="did you mean 'topk'"):
        SaeConfig.make("topkk", k=4)
    with pytest.raises(ConfigError, match="unknown method 'no_such_method'"):
        SaeConfig(method="no_such_method")


def test_builtin_methods_are_registered_with_the_sae_layer():
    builtin = {
        "topk", "batchtopk", "mutual_choice", "feature_choice", "aux_zipf", "matryoshka",
        "multi_topk", "hierarchical_topk", "msae", "gsae", "mp", "jumprelu",
    }  # fmt: skip
    assert builtin <= set(METHODS)
    for name in builtin:
        assert get_method(name) is METHODS[name] and METHODS[name].name == name
    assert SaeConfig().method == "topk" and type(Sae(12, SaeConfig(d_sae=40)).activation).__name__ == "TopK"


# ------------------------------------------------------------------------------ decoder constraint


def test_projected_gradient_is_orthogonal_to_decoder_rows():
    sae = tiny_sae()
    sae.W_dec.grad = torch.randn(40, 12)
    before = sae.W_dec.grad.clone()
    sae.project_out_parallel_grad_()
    g = sae.W_dec.grad
    dots = (g * sae.W_dec).sum(dim=1).abs()
    assert (dots < 1e-6 * g.norm(dim=1)).all()
    # Only the radial component was removed: the tangential part is untouched.
    radial = (before * sae.W_dec).sum(dim=1, keepdim=True) * sae.W_dec
    torch.testing.assert_close(g, before - radial, rtol=1e-5, atol=1e-6)


def test_constraint_helpers_work_in_fp32_for_half_weights():
    from saekit.sae import normalize_rows_, project_out_parallel_

    W = (torch.randn(20, 9) * 3).half()
    normalize_rows_(W)
    assert W.dtype == torch.float16
    assert ((W.float().norm(dim=1) - 1).abs() < 2e-3).all()
    g = torch.randn(20, 9).half()
    project_out_parallel_(g, W)
    assert ((g.float() * W.float()).sum(1).abs() < 1e-2 * g.float().norm(dim=1)).all()


def test_decoder_rows_stay_unit_norm_after_every_step():
    data = SparseDictionaryData(d_in=12, n_features=30, k_active=3, seed=1)
    sae = tiny_sae()
    opt = torch.optim.Adam(sae.parameters(), lr=3e-2, eps=6.25e-10)
    for _ in range(15):
        x = data.sample(64)
        loss = (sae(x).x_hat - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        constrained_adam_step(sae, opt)
        assert ((sae.W_dec.norm(dim=1) - 1).abs() < 1e-5).all()
    # Sanity: with this large lr an unconstrained step would move the norms well off 1.
    sae.W_dec.grad = torch.randn(40, 12)
    opt.step()
    assert ((sae.W_dec.norm(dim=1) - 1).abs() > 1e-3).any()


# ---------------------------------------------------------------------------------------- init


def _weiszfeld_reference(points, iters=2000):
    """Independent fp64 Weiszfeld from the coordinate-wise median, run to convergence."""
    p = points.double()
    g = p.median(dim=0).values
    for _ in range(iters):
        w = 1.0 / (p - g).norm(dim=1).clamp_min(1e-15)
        g = (w[:, None] * p).sum(0) / w.sum()
    return g


def test_geometric_median_matches_weiszfeld_and_is_optimal():
    gen = torch.Generator().manual_seed(3)
    pts = torch.randn(50, 7, generator=gen) * torch.linspace(0.5, 3, 7)
    med = geometric_median(pts, max_iter=500, tol=1e-9)
    torch.testing.assert_close(med.double(), _weiszfeld_reference(pts), rtol=1e-4, atol=1e-4)
    cost = lambda g: (pts - g).norm(dim=1).sum()
    for _ in range(20):  # no nearby point does better
        assert cost(med) <= cost(med + 1e-2 * torch.randn(7, generator=gen)) + 1e-5
    assert cost(med) < cost(pts.mean(0))


def test_geometric_median_is_robust_to_an_outlier_and_a_repeated_point():
    gen = torch.Generator().manual_seed(4)
    pts = torch.randn(41, 5, generator=gen)
    with_outlier = torch.cat([pts, torch.full((1, 5), 1e4)])
    shift_median = (geometric_median(with_outlier) - geometric_median(pts)).norm()
    shift_mean = (with_outlier.mean(0) - pts.mean(0)).norm()
    assert shift_median < 0.2 and shift_mean > 100 * shift_median
    # Estimate starting exactly on data (all points equal): no division by zero.
    same = torch.ones(10, 3)
    torch.testing.assert_close(geometric_median(same), torch.ones(3))


@pytest.mark.parametrize("mode", ["geometric_median", "mean", "zeros"])
def test_init_from_data_sets_b_dec_and_ties_weights(mode):
    x = torch.randn(300, 12) + 5.0
    sae = tiny_sae(init_b_dec=mode)
    init_sae_from_data_(sae, x)
    expected = {"geometric_median": geometric_median(x), "mean": x.mean(0), "zeros": torch.zeros(12)}[mode]
    torch.testing.assert_close(sae.b_dec.detach(), expected)
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(40))
    assert torch.count_nonzero(sae.b_enc) == 0
    with pytest.raises(DataError, match="NaN"):
        init_sae_from_data_(sae, torch.full((4, 12), float("nan")))


# --------------------------------------------------------------------------- activation scale


def test_estimate_act_scale_gives_mean_norm_sqrt_d():
    x = torch.randn(500, 16) * 7.0
    c = estimate_act_scale(x, "mean_norm_sqrt_d")
    assert abs((x * c).norm(dim=1).mean().item() - 4.0) < 1e-4
    assert estimate_act_scale(x, "none") == 1.0
    with pytest.raises(DataError):
        estimate_act_scale(torch.zeros(3, 16), "mean_norm_sqrt_d")


def _trained_like(sae):
    """Break the tied init so the export test exercises every parameter."""
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        sae.normalize_decoder_rows_()
    return sae


def test_reconstruct_applies_scale_in_and_out():
    x_raw = torch.randn(8, 12) * 30
    sae = _trained_like(tiny_sae())
    sae.act_scale = 0.05
    expected = sae.decode(sae.encode_normalized(x_raw * 0.05, training=False)) / 0.05
    torch.testing.assert_close(sae.reconstruct(x_raw), expected)
    assert sae.reconstruct(x_raw.double()).dtype == torch.float64


def test_fold_act_scale_gives_identical_raw_reconstructions():
    x_raw = torch.randn(32, 12) * 30 + 4
    sae = _trained_like(tiny_sae())
    sae.act_scale = estimate_act_scale(x_raw, "mean_norm_sqrt_d")
    folded = sae.fold_act_scale()
    assert folded.act_scale == 1.0 and sae.act_scale != 1.0  # original untouched
    torch.testing.assert_close(folded.reconstruct(x_raw), sae.reconstruct(x_raw), rtol=1e-5, atol=1e-4)
    a = sae.encode(x_raw, training=False)
    b = folded.encode(x_raw, training=False)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(b.values, a.values / sae.act_scale, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    sae = _trained_like(tiny_sae(k=4))
    sae.act_scale, sae.hookpoint, sae.model_id = 0.25, "blocks.1.hook_resid_post", "tiny"
    sae.extra_cfg = {"cache_hash": "abc"}
    path = sae.save(tmp_path / "final")
    loaded = Sae.load(path)
    x = torch.randn(9, 12)
    assert torch.equal(loaded.reconstruct(x), sae.reconstruct(x))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name))
    assert (loaded.act_scale, loaded.hookpoint, loaded.model_id) == (0.25, "blocks.1.hook_resid_post", "tiny")
    assert loaded.cfg == sae.cfg and loaded.extra_cfg == {"cache_hash": "abc"}
    meta = json.loads((path / "cfg.json").read_text())
    assert meta["format_version"] == 2 and meta["method"] == "topk" and meta["d_sae"] == 40
    assert meta["sae"]["method"] == "topk" and "activation" not in meta and "activation" not in meta["sae"]
    assert meta["sae"]["params"] == {"k": 4, "k_aux": None, "aux_coef": 1 / 32}
    assert meta["sae"]["params"] == sae.activation.params_summary()
    assert not list(tmp_path.glob(".*"))  # no temp directories left behind
    # Saving again over an existing checkpoint replaces it.
    sae.b_dec.data += 1
    assert torch.equal(Sae.load(sae.save(path)).b_dec, sae.b_dec)


def test_saved_weights_are_contiguous_in_saelens_orientation(tmp_path):
    from safetensors.torch import load_file

    sae = tiny_sae()
    tensors = load_file(str(sae.save(tmp_path / "s") / "sae.safetensors"))
    assert tensors["W_enc"].shape == (12, 40) and tensors["W_enc"].is_contiguous()
    assert torch.equal(tensors["W_enc"], sae.W_enc.detach())
    assert "threshold" not in tensors


def test_threshold_buffer_round_trips(tmp_path):
    from saekit.sae import Method, register_method
    from saekit.sae.config import TopKParams
    from saekit.sae.methods.topk import TopK
    from saekit.sae.objective import ReconstructionAuxK

    class ThresholdedTopK(TopK):
        threshold = "buffer"

    register_method(
        Method(
            name="_test_thr",
            params=TopKParams,
            activation=ThresholdedTopK,
            objective=ReconstructionAuxK,
            summary="test: TopK with a threshold buffer",
        )
    )
    try:
        sae = tiny_sae(method="_test_thr")
        assert sae.threshold is not None and not isinstance(sae.threshold, torch.nn.Parameter)
        sae.threshold.copy_(torch.rand(40))
        sae.act_scale = 2.0
        loaded = Sae.load(sae.save(tmp_path / "t"))
        assert torch.equal(loaded.threshold, sae.threshold)
        torch.testing.assert_close(sae.fold_act_scale().threshold, sae.threshold / 2.0)
    finally:
        del METHODS["_test_thr"]


def test_load_missing_or_corrupt_checkpoint_raises_run_dir_error(tmp_path):
    with pytest.raises(RunDirError, match="cfg.json is missing"):
        Sae.load(tmp_path / "nowhere")
    path = tiny_sae().save(tmp_path / "c")
    weights = path / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(RunDirError, match="corrupt"):
        Sae.load(path)
    path = tiny_sae().save(tmp_path / "j")
    (path / "cfg.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        Sae.load(path)
    path = tiny_sae().save(tmp_path / "v")
    meta = json.loads((path / "cfg.json").read_text())
    meta["d_in"] = 13
    (path / "cfg.json").write_text(json.dumps(meta))
    with pytest.raises(RunDirError, match="do not belong together"):
        Sae.load(path)
    meta["d_in"], meta["sae"]["method"] = 12, "no_such_method"
    (path / "cfg.json").write_text(json.dumps(meta))
    with pytest.raises(RunDirError, match="custom method"):
        Sae.load(path)


# ---------------------------------------------------------------------------------- synthetic


def test_synthetic_data_is_seeded_sparse_and_unit_norm():
    a = SparseDictionaryData(d_in=10, n_features=25, k_active=4, seed=7)
    b = SparseDictionaryData(d_in=10, n_features=25, k_active=4, seed=7)
    torch.testing.assert_close(a.features.norm(dim=1), torch.ones(25))
    x, active, coefs = a.sample_with_codes(50)
    assert torch.equal(x, b.sample(50))
    assert all(len(set(row.tolist())) == 4 for row in active)
    assert ((coefs >= 0.5) & (coefs <= 1.5)).all()
    torch.testing.assert_close(x, torch.einsum("nk,nkd->nd", coefs, a.features[active]))
    assert a.recovery_score(a.features) == pytest.approx(1.0)
    assert a.recovery_score(torch.randn(25, 10)) < 0.9
