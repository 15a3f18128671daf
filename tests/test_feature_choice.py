"""Feature Choice: the Feature Choice row of algorithms.md §12, plus CLI train + reload."""

import math
from pathlib import Path

import pytest
import torch
from sae_checks import assert_grads_match_dense_reference, train_on_synthetic
from safetensors.torch import load_file

from saekit.cli import main
from saekit.config import SaeConfig
from saekit.errors import ConfigError
from saekit.sae import Sae
from saekit.synthetic import SparseDictionaryData

ROOT = Path(__file__).resolve().parents[1]


def make_sae(d_in=10, k=4, d_sae=30, **kw):
    sae = Sae(d_in, SaeConfig.make("feature_choice", k=k, d_sae=d_sae, normalize_activations="none", **kw))
    with torch.no_grad():  # untie and shift so every parameter matters
        sae.W_enc.add_(0.2 * torch.randn_like(sae.W_enc))
        sae.b_dec.copy_(0.5 * torch.randn(d_in))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae))
    return sae


def pre_acts(sae, x):
    with torch.no_grad():
        return (x - sae.b_dec) @ sae.W_enc + sae.b_enc


def column_counts(code):
    return torch.bincount(code.indices[code.values > 0], minlength=code.d_sae)


def entry_set(code):
    return set(zip(code.row_ids().tolist(), code.indices.tolist(), strict=True))


def row_sets(code):
    return [set(code.indices[a:b].tolist()) for a, b in zip(code.offsets[:-1], code.offsets[1:], strict=True)]


# ------------------------------------------------------------------------------- training selection


def candidates(h, m):
    """(row, latent) -> value of every latent's top-m positive tokens."""
    top = torch.topk(h, m, dim=0)
    return {
        (int(top.indices[j, c]), c): float(top.values[j, c])
        for c in range(h.shape[1])
        for j in range(m)
        if top.values[j, c] > 0
    }


@pytest.mark.parametrize("batch,d_in,k,d_sae", [(16, 10, 4, 30), (9, 7, 5, 40), (40, 12, 3, 50)])
def test_each_latent_takes_its_top_m_positive_tokens_within_the_kb_budget(batch, d_in, k, d_sae):
    sae = make_sae(d_in, k, d_sae)
    x = torch.randn(batch, d_in)
    h = pre_acts(sae, x)
    code = sae.encode(x, training=True)
    m = math.ceil(k * batch / d_sae)
    counts = column_counts(code)
    assert (counts <= m).all()
    assert code.values.numel() <= k * batch  # the allocation budget: mean training L0 <= k
    pool = candidates(h, m)
    kept = sorted(pool.values(), reverse=True)[: k * batch]  # the best k·B of the per-latent candidates
    expected = {key for key, v in pool.items() if v >= kept[-1]}
    assert entry_set(code) == expected
    assert (code.values > 0).all()  # only positive affinities are kept
    torch.testing.assert_close(code.values, h[code.row_ids(), code.indices])


def test_the_budget_binds_when_m_rounds_up():
    """ceil(k·B/d_sae)·d_sae > k·B: the old rule kept every candidate (mean L0 above k); the budget keeps
    exactly k·B, dropping the smallest candidates, so Feature Choice trains at the same L0 as TopK."""
    sae = make_sae(d_in=10, k=4, d_sae=30)
    with torch.no_grad():
        sae.b_enc.add_(20.0)  # every affinity positive: all m·d_sae = 270 candidates are eligible
    x = torch.randn(64, 10)
    h = pre_acts(sae, x)
    m = math.ceil(4 * 64 / 30)
    assert len(candidates(h, m)) == m * 30 > 4 * 64
    code = sae.encode(x, training=True)
    assert code.values.numel() == 4 * 64
    assert code.l0_per_row().float().mean() == pytest.approx(4.0)


def test_uniform_frequency_data_every_latent_stays_alive():
    """With m·d_sae = k·B exactly (no cut), every latent with ≥ m positive affinities fires m times."""
    sae = make_sae(d_in=10, k=3, d_sae=30)
    x = torch.randn(40, 10)
    h = pre_acts(sae, x)
    counts = column_counts(sae.encode(x, training=True))
    positive = (h > 0).sum(0)
    assert torch.equal(counts, positive.clamp(max=4))
    fired = counts > 0
    assert torch.equal(fired, positive > 0)  # no latent with a positive affinity is dead over the batch


def _pairs(top_rows):
    m, d_sae = top_rows.shape
    return [(int(top_rows[j, c]), c) for c in range(d_sae) for j in range(m)]


def test_rows_can_get_no_latent_and_select_matches_encode():
    sae = make_sae()
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)
    x = 3 * torch.randn(16, 10)
    x[3] = sae.b_dec.detach()  # h[3] = b_enc < 0 on every latent
    h = pre_acts(sae, x)
    assert (h[3] <= 0).all()
    code = sae.encode(x, training=True)
    assert code.offsets[4] == code.offsets[3]
    via_select = sae.activation.select(h, sae=sae, batch=None, training=True)
    assert set(zip(via_select.rows.tolist(), via_select.indices.tolist(), strict=True)) == entry_set(code)


def test_sparse_gradients_match_a_dense_reference():
    sae = make_sae()
    x = torch.randn(12, 10)
    assert_grads_match_dense_reference(sae, x)


def test_aux_columns_and_dense_pre_acts_come_back_batch_major():
    sae = make_sae()
    x = torch.randn(16, 10)
    cols = torch.tensor([1, 7, 22])
    out = sae(x, aux_columns=cols, keep_pre_acts=True)
    torch.testing.assert_close(out.pre_acts, pre_acts(sae, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.aux_pre_acts, pre_acts(sae, x)[:, cols], rtol=1e-5, atol=1e-5)


def test_tokens_per_latent_default_explicit_and_errors():
    sae = make_sae(k=4, d_sae=30)
    assert sae.activation.tokens_per_latent(16, 30) == math.ceil(4 * 16 / 30)
    with pytest.raises(ConfigError, match="raise batch_size to at least 8.*sae.tokens_per_latent"):
        sae.encode(torch.randn(5, 10), training=True)  # 4·5 < 30: m would be below 1
    explicit = make_sae(k=4, d_sae=30, tokens_per_latent=1)
    assert (column_counts(explicit.encode(torch.randn(5, 10), training=True)) <= 1).all()
    wide = make_sae(tokens_per_latent=50)
    assert wide.activation.tokens_per_latent(6, 30) == 6  # capped at the batch
    with pytest.raises(ConfigError, match="tokens_per_latent"):
        make_sae(tokens_per_latent=0)


# ------------------------------------------------------------------------------------------ thresholds


def effective_threshold(h, m, budget):
    """Per latent: max(m-th largest, the k·B-th largest candidate), clamped at 0."""
    top = torch.topk(h, m, dim=0).values
    cut = torch.topk(top.reshape(-1), budget).values[-1]
    return top[-1].clamp_min(cut).clamp_min(0)


def test_per_latent_thresholds_follow_the_ema_of_the_effective_threshold():
    sae = make_sae(threshold_ema=0.2)
    x1, x2 = torch.randn(16, 10), torch.randn(16, 10)
    m = math.ceil(4 * 16 / 30)
    sae.encode(x1, training=True)
    obs1 = effective_threshold(pre_acts(sae, x1), m, 4 * 16)
    torch.testing.assert_close(sae.threshold, obs1, rtol=1e-6, atol=1e-7)  # first step sets θ
    # both cases are exercised: latents held at the budget cut, and latents above it at their m-th value
    assert (obs1 == obs1.min()).sum() > 1 and (obs1 > obs1.min()).any()
    theta1 = sae.threshold.double()
    sae.encode(x2, training=True)
    obs2 = effective_threshold(pre_acts(sae, x2), m, 4 * 16).double()
    torch.testing.assert_close(sae.threshold, (0.8 * theta1 + 0.2 * obs2).float(), rtol=1e-6, atol=1e-7)
    assert sae.threshold.dtype in (torch.float32, torch.float64)
    before = sae.threshold.clone()
    sae.eval()
    sae(x1)
    sae.encode(x2, training=False)
    assert torch.equal(sae.threshold, before)


def test_eval_mode_uses_per_latent_thresholds_and_is_batch_independent():
    sae = make_sae()
    sae.encode(torch.randn(16, 10), training=True)
    sae.eval()
    x = torch.randn(20, 10)
    full = sae.encode(x)
    expected = [set(torch.nonzero(r > sae.threshold).squeeze(1).tolist()) for r in pre_acts(sae, x)]
    assert row_sets(full) == expected
    for i in range(x.shape[0]):
        one = sae.encode(x[i : i + 1])
        assert row_sets(one) == [expected[i]]
        a, b = full.offsets[i], full.offsets[i + 1]
        torch.testing.assert_close(
            one.values[one.indices.argsort()], full.values[a:b][full.indices[a:b].argsort()]
        )


def test_thresholds_reproduce_about_m_firings_per_latent_on_held_out_batches():
    data = SparseDictionaryData(d_in=16, n_features=48, k_active=4, seed=1, noise=0.02)
    sae = Sae(16, SaeConfig.make("feature_choice", k=4, d_sae=64, normalize_activations="none",
                                 threshold_ema=0.05))  # fmt: skip
    batch = 256
    m = math.ceil(4 * batch / 64)
    for _ in range(150):  # training-mode selections learn θ (the weights do not matter for this property)
        sae.encode(data.sample(batch), training=True)
    held_out = torch.stack([column_counts(sae.encode(data.sample(batch), training=False)) for _ in range(20)])
    per_latent = held_out.float().mean(0)  # firings per latent per batch
    assert abs(per_latent.mean().item() - m) <= 0.2 * m
    assert ((per_latent > m / 2) & (per_latent < 2 * m)).float().mean() >= 0.9


# ---------------------------------------------------------------------------------- CLI end to end


def test_cli_trains_and_reloads_with_identical_eval_codes(tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert (
        main(["collect", str(ROOT / "configs/tiny_collect.yaml"), f"out_dir={cache}", "max_tokens=2000"]) == 0
    )
    assert main(
        ["train", str(ROOT / "configs/tiny_feature_choice.yaml"), f"cache_dir={cache}", f"run_dir={run}",
         "progress=false", "total_tokens=2048", "checkpoint_every=4", "norm_estimation_tokens=1000",
         "shuffle_buffer_tokens=1000"]
    ) == 0  # fmt: skip
    sae = Sae.load(run / "final").eval()
    assert sae.cfg.method == "feature_choice"
    assert (sae.threshold >= 0).all() and sae.threshold.unique().numel() > sae.d_sae // 2  # per-latent values
    shard = sorted((cache / "blocks.1.hook_resid_post").glob("shard-*.safetensors"))[0]
    raw = load_file(str(shard))["acts"][:256]
    code = sae.encode(raw)  # raw activations: encode applies act_scale
    again = Sae.load(sae.save(tmp_path / "resaved")).eval().encode(raw)
    assert torch.equal(code.indices, again.indices) and torch.equal(code.values, again.values)
    h = pre_acts(sae, sae.scale_input(raw))
    expected = [set(torch.nonzero(r > sae.threshold).squeeze(1).tolist()) for r in h]
    assert row_sets(code) == expected
    assert code.l0_per_row().float().mean() > 0


# ------------------------------------------------------------------------------ known sparse structure


def _held_out_fit(sae, data):
    x = data.sample(8192)
    fvu = ((sae.reconstruct(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    return fvu, sae.encode(x).l0_per_row().float().mean().item(), data.recovery_score(sae.W_dec)


def test_on_uniform_frequency_synthetic_data_feature_choice_matches_topk():
    """Every true feature equally frequent: the per-latent capacity m = k·B/n is each feature's own share,
    so Feature Choice must reconstruct about as well as TopK at the same L0 (threshold inference included)
    and recover the dictionary. (With Zipf-distributed frequencies it cannot: see README, Methods.)"""
    fits = {}
    for method in ("topk", "feature_choice"):
        torch.manual_seed(0)
        data = SparseDictionaryData(d_in=32, n_features=64, k_active=4, seed=0)
        extra = {"threshold_ema": 0.05} if method == "feature_choice" else {}
        cfg = SaeConfig.make(method, k=4, expansion_factor=2, **extra)
        fits[method] = _held_out_fit(train_on_synthetic(cfg, data, steps=300, batch_rows=1024), data)
    fvu, l0, recovery = fits["feature_choice"]
    assert fvu <= 1.1 * fits["topk"][0], fits
    assert 3.6 <= l0 <= 4.4, fits  # per-latent thresholds reproduce the training budget on new rows
    assert recovery >= 0.9, fits
