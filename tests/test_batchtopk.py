"""BatchTopK / Mutual Choice: their row of algorithms.md §12, plus CLI train + reload."""

import math
from pathlib import Path

import pytest
import torch
from sae_checks import assert_grads_match_dense_reference
from safetensors.torch import load_file

from saekit.cli import main
from saekit.config import SaeConfig
from saekit.errors import ConfigError
from saekit.sae import Sae, make_objective
from saekit.sae.methods.batchtopk import CANDIDATES_PER_ROW, batch_top_entries
from saekit.synthetic import SparseDictionaryData
from saekit.train.step import training_step
from saekit.types import Batch

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("batchtopk", "mutual_choice")


def make_sae(method="batchtopk", d_in=10, k=4, d_sae=30, **kw):
    sae = Sae(d_in, SaeConfig.make(method, k=k, d_sae=d_sae, normalize_activations="none", **kw))
    with torch.no_grad():  # untie and shift so every parameter matters
        sae.W_enc.add_(0.2 * torch.randn_like(sae.W_enc))
        sae.b_dec.copy_(0.5 * torch.randn(d_in))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae) + 0.3)  # most entries positive
    return sae


def entry_set(code):
    return set(zip(code.row_ids().tolist(), code.indices.tolist(), strict=True))


def row_sets(code):
    return [set(code.indices[a:b].tolist()) for a, b in zip(code.offsets[:-1], code.offsets[1:], strict=True)]


# ------------------------------------------------------------------------------- training selection


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch,d_in,k,d_sae", [(16, 10, 4, 30), (7, 9, 3, 41), (33, 12, 5, 64)])
def test_training_selects_exactly_the_top_bk_of_the_flattened_batch(name, batch, d_in, k, d_sae):
    sae = make_sae(name, d_in, k, d_sae)
    out = sae(torch.randn(batch, d_in), keep_pre_acts=True)
    h = out.pre_acts
    assert (h > 0).sum() >= batch * k  # the premise of "nnz = B·k exactly"
    flat = torch.topk(h.reshape(-1), batch * k).indices
    expected = set(zip((flat // d_sae).tolist(), (flat % d_sae).tolist(), strict=True))
    assert entry_set(out.code) == expected
    assert out.code.values.numel() == batch * k and int((out.code.values > 0).sum()) == batch * k
    assert len(set(out.code.offsets.diff().tolist())) > 1  # per-row counts vary
    rows = out.code.row_ids()
    torch.testing.assert_close(out.code.values.detach(), torch.relu(h[rows, out.code.indices]))


def test_fewer_positive_entries_than_bk_leaves_zeros():
    sae = make_sae()
    with torch.no_grad():
        sae.b_enc.fill_(-2.0)
    out = sae(torch.randn(16, 10), keep_pre_acts=True)
    n_pos = int((out.pre_acts > 0).sum())
    assert n_pos < 16 * 4
    assert out.code.values.numel() == 16 * 4 and int((out.code.values > 0).sum()) == n_pos


@pytest.mark.parametrize("boost_rows", [0, 1, 3])
def test_batch_top_entries_equals_a_full_flattened_topk(boost_rows):
    h = torch.randn(50, 40)
    h[:boost_rows] += 6.0  # these rows hold far more than CANDIDATES_PER_ROW·k winners: the repair path
    total = 50 * 4
    rows, cols, vals = batch_top_entries(h, total)
    ref = torch.topk(h.reshape(-1), total).indices
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == set(
        zip((ref // 40).tolist(), (ref % 40).tolist(), strict=True)
    )
    torch.testing.assert_close(vals, h[rows, cols])
    if boost_rows:
        assert int((rows == 0).sum()) > CANDIDATES_PER_ROW * 4


def test_mutual_choice_and_batchtopk_give_identical_codes():
    bt = make_sae("batchtopk")
    mc = make_sae("mutual_choice")
    mc.load_state_dict(bt.state_dict())
    x = torch.randn(16, 10)
    a, b = bt.encode(x, training=True), mc.encode(x, training=True)
    assert torch.equal(a.offsets, b.offsets) and torch.equal(a.indices, b.indices)
    assert torch.equal(a.values, b.values)
    assert torch.equal(bt.threshold, mc.threshold)


@pytest.mark.parametrize("name", NAMES)
def test_sparse_gradients_match_a_dense_reference_with_variable_rows(name):
    sae = make_sae(name)
    x = torch.randn(12, 10)
    out, got = assert_grads_match_dense_reference(sae, x)
    unselected = torch.ones(30, dtype=torch.bool)
    unselected[out.code.indices] = False
    assert unselected.any() and torch.count_nonzero(got[0][unselected]) == 0  # W_enc_T: latent-major


# ------------------------------------------------------------------------------------------ threshold


def smallest_positive(code):
    return code.values[code.values > 0].min().double()


def test_threshold_follows_the_ema_formula_in_training_mode_only():
    sae = make_sae(threshold_ema=0.1)
    assert sae.threshold.dtype in (torch.float32, torch.float64) and not sae.threshold.any()
    x1, x2, x3 = torch.randn(16, 10), torch.randn(16, 10), torch.randn(16, 10)
    obs1 = smallest_positive(sae.encode(x1, training=True))
    # The first step sets θ directly.
    assert torch.equal(sae.threshold, torch.full((30,), obs1.item(), dtype=torch.float32))
    theta1 = sae.threshold[0].double()
    obs2 = smallest_positive(sae.encode(x2, training=True))
    expected = ((1 - 0.1) * theta1 + 0.1 * obs2).float()  # fp64 arithmetic, fp32 storage
    assert obs2 != obs1 and torch.equal(sae.threshold, expected.expand(30))
    before = sae.threshold.clone()
    sae.encode(x3, training=False)
    sae.eval()
    sae(x3)
    sae.encode(x3)
    assert torch.equal(sae.threshold, before)  # no update outside training mode
    sae.train()
    sae(x3)
    assert not torch.equal(sae.threshold, before)


def test_batch_with_nothing_positive_leaves_the_threshold_alone():
    sae = make_sae()
    sae.encode(torch.randn(16, 10), training=True)
    learned = sae.threshold.clone()
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
    sae.encode(torch.randn(16, 10), training=True)
    assert torch.equal(sae.threshold, learned)


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_the_per_token_threshold_rule(name):
    sae = make_sae(name)
    x = torch.randn(24, 10)
    sae.encode(torch.randn(16, 10), training=True)
    sae.eval()
    full = sae.encode(x)
    with torch.no_grad():
        h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    expected = [set(torch.nonzero(row > sae.threshold[0]).squeeze(1).tolist()) for row in h]
    assert row_sets(full) == expected
    assert len(set(full.offsets.diff().tolist())) > 1
    for i in range(x.shape[0]):
        one = sae.encode(x[i : i + 1])
        assert row_sets(one) == [expected[i]]
        a, b = full.offsets[i], full.offsets[i + 1]
        order_full, order_one = full.indices[a:b].argsort(), one.indices.argsort()
        torch.testing.assert_close(one.values[order_one], full.values[a:b][order_full])


def test_unlearned_threshold_falls_back_to_per_row_topk(caplog):
    sae = make_sae()
    x = torch.randn(8, 10)
    code = sae.encode(x, training=False)
    assert (code.offsets.diff() == 4).all()
    with torch.no_grad():
        h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert row_sets(code) == [set(r.tolist()) for r in torch.topk(h, 4, dim=1).indices]
    sae.encode(x, training=False)
    assert caplog.text.count("has not been learned") == 1  # warned once, not per call


def test_invalid_threshold_ema_is_a_config_error():
    with pytest.raises(ConfigError, match="threshold_ema"):
        make_sae(threshold_ema=0.0)


def test_threshold_survives_save_load_and_act_scale_folding(tmp_path):
    sae = make_sae()
    sae.act_scale = 2.5
    x_raw = torch.randn(16, 10)
    sae.encode(x_raw, training=True)
    sae.save(tmp_path / "ckpt")
    loaded = Sae.load(tmp_path / "ckpt")
    assert loaded.cfg.method == "batchtopk" and torch.equal(loaded.threshold, sae.threshold)
    probe = torch.randn(9, 10)
    a, b = sae.encode(probe, training=False), loaded.encode(probe, training=False)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    folded = sae.fold_act_scale()
    torch.testing.assert_close(folded.reconstruct(x_raw), sae.reconstruct(x_raw), rtol=1e-5, atol=1e-5)


def test_held_out_threshold_mode_l0_is_within_20_percent_of_k():
    data = SparseDictionaryData(d_in=16, n_features=48, k_active=4, seed=3, noise=0.02)
    cfg = SaeConfig.make(
        "batchtopk", k=4, d_sae=64, normalize_activations="none", k_aux=0, threshold_ema=0.05
    )
    sae = Sae(16, cfg)
    objective = make_objective(cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(120):  # L0 in threshold mode settles by ~100 steps at this EMA rate
        out = training_step(sae, objective, optimizer, Batch(data.sample(256)), mse_scale=1.0)
    assert out.metrics["fvu_batch"] < 0.5  # it did learn something
    l0 = sae.encode(data.sample(4096), training=False).l0_per_row().float()
    assert abs(l0.mean().item() - 4) <= 0.2 * 4
    assert l0.std() > 0  # a broad per-token histogram, not a fixed k


# ---------------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bt") / "cache"
    assert (
        main(["collect", str(ROOT / "configs/tiny_collect.yaml"), f"out_dir={cache}", "max_tokens=2000"]) == 0
    )
    return cache


def train_tiny(config, cache, run):
    return main(
        ["train", str(ROOT / config), f"cache_dir={cache}", f"run_dir={run}", "progress=false",
         "total_tokens=2048", "checkpoint_every=4", "norm_estimation_tokens=1000",
         "shuffle_buffer_tokens=1000"]
    )  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_cli_trains_and_reloads_with_identical_eval_codes(name, tiny_cache, tmp_path):
    run = tmp_path / "run"
    assert train_tiny(f"configs/tiny_{name}.yaml", tiny_cache, run) == 0
    sae = Sae.load(run / "final").eval()
    assert sae.cfg.method == name
    assert (sae.threshold > 0).all() and (sae.threshold == sae.threshold[0]).all()
    mid = Sae.load(run / "checkpoints" / "step_0000004" / "sae")
    assert (mid.threshold > 0).all() and not torch.equal(mid.threshold, sae.threshold)  # it kept learning
    shard = sorted((tiny_cache / "blocks.1.hook_resid_post").glob("shard-*.safetensors"))[0]
    x = sae.scale_input(load_file(str(shard))["acts"][:200])
    code = sae.encode_normalized(x)
    again = Sae.load(sae.save(tmp_path / "resaved")).eval().encode_normalized(x)
    assert torch.equal(code.indices, again.indices) and torch.equal(code.values, again.values)
    with torch.no_grad():
        h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert row_sets(code) == [set(torch.nonzero(r > sae.threshold[0]).squeeze(1).tolist()) for r in h]
    l0 = code.l0_per_row().float().mean().item()
    assert 0 < l0 < 4 * sae.cfg.params.k and math.isfinite(l0)
