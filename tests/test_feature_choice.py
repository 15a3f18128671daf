"""Feature Choice: the Feature Choice row of algorithms.md §12, plus CLI train + reload."""

import math
from pathlib import Path

import pytest
import torch
from sae_checks import assert_grads_match_dense_reference
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


@pytest.mark.parametrize("batch,d_in,k,d_sae", [(16, 10, 4, 30), (9, 7, 5, 40), (40, 12, 3, 50)])
def test_each_latent_takes_its_top_m_positive_tokens(batch, d_in, k, d_sae):
    sae = make_sae(d_in, k, d_sae)
    x = torch.randn(batch, d_in)
    h = pre_acts(sae, x)
    code = sae.encode(x, training=True)
    m = math.ceil(k * batch / d_sae)
    counts = column_counts(code)
    positive = (h > 0).sum(0)
    assert (counts <= m).all()
    assert (counts[positive >= m] == m).all()  # columns with enough positive affinities get exactly m
    assert torch.equal(counts, positive.clamp(max=m))
    assert code.values.numel() <= d_sae * m
    top = torch.topk(h, m, dim=0)
    expected = {
        (r, c) for (r, c), v in zip(_pairs(top.indices), top.values.t().reshape(-1), strict=True) if v > 0
    }
    assert entry_set(code) == expected
    assert (code.values > 0).all()  # only positive affinities are kept
    torch.testing.assert_close(code.values, h[code.row_ids(), code.indices])
    fired = torch.zeros(d_sae, dtype=torch.bool)
    fired[code.indices] = True
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


def test_per_latent_thresholds_follow_the_ema_of_the_mth_largest():
    sae = make_sae(threshold_ema=0.2)
    x1, x2 = torch.randn(16, 10), torch.randn(16, 10)
    m = math.ceil(4 * 16 / 30)
    sae.encode(x1, training=True)
    obs1 = torch.topk(pre_acts(sae, x1), m, dim=0).values[-1].clamp_min(0)
    torch.testing.assert_close(sae.threshold, obs1, rtol=1e-6, atol=1e-7)  # first step sets θ
    assert (obs1 == 0).any() and (obs1 > 0).any()  # both the clamp and the normal case are exercised
    theta1 = sae.threshold.double()
    sae.encode(x2, training=True)
    obs2 = torch.topk(pre_acts(sae, x2), m, dim=0).values[-1].clamp_min(0).double()
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
    x = sae.scale_input(load_file(str(shard))["acts"][:256])
    code = sae.encode(x)
    again = Sae.load(sae.save(tmp_path / "resaved")).eval().encode(x)
    assert torch.equal(code.indices, again.indices) and torch.equal(code.values, again.values)
    expected = [set(torch.nonzero(r > sae.threshold).squeeze(1).tolist()) for r in pre_acts(sae, x)]
    assert row_sets(code) == expected
    assert code.l0_per_row().float().mean() > 0
