"""Matryoshka objective (fixed and sampled prefixes): the Matryoshka rows of algorithms.md §12, per-prefix
metrics, and CLI train + reload."""

import copy
import dataclasses
import functools
import json
from pathlib import Path

import pytest
import torch
from sae_checks import train_on_synthetic

from saekit.config import SaeConfig
from saekit.errors import ConfigError
from saekit.eval.levels import level_metrics
from saekit.sae import METHODS, Sae, constrained_adam_step, get_method, make_objective
from saekit.sae.methods.matryoshka import MatryoshkaObjective, permute_latents_, resort_key
from saekit.sae.methods.selection import SELECTION_RULES
from saekit.sae.objective import ReconstructionAuxK, auxk_loss
from saekit.sae.prefixes import (
    prefix_losses,
    prefix_reconstructions,
    resolve_prefix_weights,
    resolve_prefixes,
    sample_prefixes,
)
from saekit.synthetic import HierarchicalData
from saekit.train.dead import DeadLatentTracker
from saekit.train.step import training_step
from saekit.types import Batch

ROOT = Path(__file__).resolve().parents[1]
ACTS = ["topk", "batchtopk"]  # Matryoshka's selection rules under test: per-row and batch-coupled
assert set(ACTS) <= set(SELECTION_RULES)


def make_sae(d_in=10, k=4, d_sae=32, activation="topk", **kw):
    """A Matryoshka SAE whose selection rule is `activation` (Matryoshka's own default is batchtopk)."""
    cfg = SaeConfig.make(
        "matryoshka", activation=activation, k=k, d_sae=d_sae, normalize_activations="none", **kw
    )
    sae = Sae(d_in, cfg)
    with torch.no_grad():  # untie and shift so every parameter matters
        sae.W_enc.add_(0.2 * torch.randn_like(sae.W_enc))
        sae.b_dec.copy_(0.3 * torch.randn(d_in))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae))
    return sae


# ------------------------------------------------------------------------------------------ prefixes


def test_resolve_prefixes_defaults_and_validation():
    defaults = SaeConfig.make("matryoshka").params
    assert defaults.prefixes is None and defaults.prefix_weights is None
    assert resolve_prefixes(defaults.prefixes, 256) == [16, 32, 64, 128, 256]
    assert resolve_prefixes(None, 20) == [1, 2, 5, 10, 20]  # n/16 = 1, all widths kept, ≥ 1
    assert resolve_prefixes((4, 8), 32) == [4, 8, 32]  # d_sae appended
    assert resolve_prefix_weights(defaults.prefix_weights, 4) == [0.25] * 4
    with pytest.raises(ConfigError, match="strictly increasing"):
        resolve_prefixes((8, 8, 32), 32)
    with pytest.raises(ConfigError, match="exceeds d_sae"):
        resolve_prefixes((8, 64), 32)
    with pytest.raises(ConfigError, match="prefix_weights"):
        resolve_prefix_weights((0.5, 0.5), 3)


@pytest.mark.parametrize("d_sae,n_prefixes,min_len", [(64, 6, 1), (200, 10, 16), (12, 20, 3), (9, 3, 9)])
def test_sampled_cuts_unique_sorted_last_n_and_at_least_min_length(d_sae, n_prefixes, min_len):
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        cuts = sample_prefixes(d_sae, n_prefixes, min_len, generator=gen)
        assert cuts[-1] == d_sae
        assert all(b > a for a, b in zip(cuts, cuts[1:], strict=False))  # unique and sorted
        assert all(c >= min_len for c in cuts)
        assert len(cuts) == min(n_prefixes, d_sae - min_len + 1)


def test_sampled_cuts_favour_short_prefixes():
    gen = torch.Generator().manual_seed(0)
    firsts = torch.tensor([float(sample_prefixes(1000, 2, 1, generator=gen)[0]) for _ in range(600)])
    # Under pmf ∝ diff(sqrt), P(cut ≤ 250) = sqrt(250/999) ≈ 0.5 (±0.02 sd here); uniform would give 0.25.
    assert 0.42 < (firsts <= 250).float().mean().item() < 0.58
    with pytest.raises(ConfigError, match="min_prefix_length"):
        sample_prefixes(10, 3, 11)


# ---------------------------------------------------------------------------------- fixed prefixes


@pytest.mark.parametrize("activation", ACTS)
def test_incremental_prefix_reconstruction_equals_direct_slicing(activation):
    sae = make_sae(activation=activation)
    code = sae.encode(torch.randn(13, 10), training=True)
    prefixes = [3, 8, 20, 32]
    x_hats = prefix_reconstructions(code, sae.W_dec, sae.b_dec, prefixes)
    z = code.to_dense().detach()
    for g, m in enumerate(prefixes):
        direct = z[:, :m] @ sae.W_dec[:m].detach() + sae.b_dec.detach()
        torch.testing.assert_close(x_hats[:, g].detach(), direct, rtol=1e-5, atol=1e-6)


def test_nested_losses_match_direct_prefix_losses_in_value_and_gradient():
    sae = make_sae(k=5)
    x = torch.randn(19, 10)
    prefixes, weights = [3, 9, 20, 32], torch.tensor([0.4, 0.1, 0.3, 0.2])
    code = sae.encode(x, training=True)
    fast = (weights * prefix_losses(x, code, sae.W_dec, sae.b_dec, prefixes, 3.0)).sum()
    got = torch.autograd.grad(fast, [sae.W_enc_T, sae.b_enc, sae.W_dec, sae.b_dec])
    code = sae.encode(x, training=True)
    z = code.to_dense()
    direct = sum(
        w * 3.0 * (z[:, :m] @ sae.W_dec[:m] + sae.b_dec - x).pow(2).mean()
        for w, m in zip(weights, prefixes, strict=True)
    )
    ref = torch.autograd.grad(direct, [sae.W_enc_T, sae.b_enc, sae.W_dec, sae.b_dec])
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-6)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_prefix_loss_gives_exactly_zero_gradient_beyond_its_prefix():
    sae = make_sae(k=6)
    x = torch.randn(16, 10)
    prefixes = [4, 12, 32]
    for g, m in enumerate(prefixes[:-1]):
        sae.zero_grad(set_to_none=True)
        code = sae.encode(x, training=True)
        loss_g = prefix_losses(x, code, sae.W_dec, sae.b_dec, prefixes, 1.0)[g]
        loss_g.backward()
        assert torch.count_nonzero(sae.W_dec.grad[m:]) == 0
        assert torch.count_nonzero(sae.W_enc_T.grad.t()[:, m:]) == 0
        assert torch.count_nonzero(sae.b_enc.grad[m:]) == 0
        used = torch.unique(code.indices[(code.indices < m) & (code.values > 0)])
        assert used.numel() > 0 and (sae.W_dec.grad[used].abs().sum(1) > 0).all()
        assert (sae.W_enc_T.grad.t()[:, used].abs().sum(0) > 0).all()


@pytest.mark.parametrize("activation", ACTS)
def test_total_loss_is_weighted_sum_of_prefix_losses_plus_auxk(activation):
    prefixes, weights = (4, 10, 32), (0.5, 0.3, 0.2)
    sae = make_sae(activation=activation, prefixes=prefixes, prefix_weights=weights, k_aux=5, aux_coef=0.25)
    x = torch.randn(24, 10)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[torch.randperm(32)[:12]] = True
    objective = make_objective(sae.cfg)
    assert isinstance(objective, MatryoshkaObjective)
    out = objective(sae, Batch(x), dead_mask=dead, mse_scale=2.0)
    # Independent reference: dense code and plain per-prefix slicing.
    with torch.no_grad():
        enc = sae.activation.encode(sae, x, batch=None, training=True, aux_columns=torch.nonzero(dead)[:, 0])
        z = enc.code.to_dense()
        ref = [2.0 * (z[:, :m] @ sae.W_dec[:m] + sae.b_dec - x).pow(2).mean() for m in prefixes]
        aux = auxk_loss(
            sae, x, x - (z @ sae.W_dec + sae.b_dec), enc.aux_pre_acts, torch.nonzero(dead)[:, 0], 5
        )
    expected = sum(w * r for w, r in zip(weights, ref, strict=True)) + 0.25 * aux
    assert aux.item() > 0
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert out.losses["aux"] == pytest.approx(aux.item(), rel=1e-5)
    assert [out.metrics[f"fvu_m{m}"] for m in prefixes] == pytest.approx([r.item() for r in ref], rel=1e-5)


# ---------------------------------------------------------------------------------- sampled prefixes


def _plain_objective(sae):
    """TopK + AuxK (no prefixes): steps that are not themselves Matryoshka's."""
    return ReconstructionAuxK(sae.cfg.params)


def _stepped_sae_and_adam(steps=2, d_in=10, d_sae=32):
    sae = make_sae(d_in=d_in, d_sae=d_sae)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    objective = _plain_objective(sae)
    for _ in range(steps):
        training_step(sae, objective, opt, Batch(torch.randn(32, d_in)), mse_scale=1.0)
    return sae, opt


def _clone_with_adam(sae, opt):
    twin = copy.deepcopy(sae)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    return twin, twin_opt


def _one_step(sae, opt, x):
    training_step(sae, _plain_objective(sae), opt, Batch(x), mse_scale=1.0)


@pytest.mark.parametrize("move_moments", [True, False])
def test_permuting_latents_with_adam_moments_leaves_outputs_and_next_step_unchanged(move_moments):
    sae, opt = _stepped_sae_and_adam()
    twin, twin_opt = _clone_with_adam(sae, opt)
    perm = torch.randperm(32)
    tracker = DeadLatentTracker(32, dead_tokens=10)
    tracker.tokens_since_fired = torch.arange(32) * 3
    permute_latents_(twin, perm, optimizer=twin_opt if move_moments else None, tracker=tracker)
    assert torch.equal(tracker.tokens_since_fired, perm * 3)
    x, x_next = torch.randn(20, 10), torch.randn(32, 10)
    with torch.no_grad():
        torch.testing.assert_close(twin(x).x_hat, sae(x).x_hat, rtol=1e-6, atol=1e-6)
    _one_step(sae, opt, x_next)
    _one_step(twin, twin_opt, x_next)
    same = torch.allclose(twin.W_dec, sae.W_dec[perm], atol=1e-6) and torch.allclose(
        twin.W_enc, sae.W_enc[:, perm], atol=1e-6
    )
    # With the moments permuted the step is the same up to relabelling; without, it is not (the
    # Nabeshima reference-code bug that the test must be able to catch).
    assert same == move_moments
    if move_moments:
        torch.testing.assert_close(twin.b_enc, sae.b_enc[perm], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(twin.b_dec, sae.b_dec, rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(twin(x).x_hat, sae(x).x_hat, rtol=1e-5, atol=1e-5)


def test_permutation_also_moves_threshold_buffer():
    sae = make_sae(activation="batchtopk")  # the threshold buffer exists only for threshold activations
    assert sae.activation.threshold == "buffer" and not isinstance(sae.threshold, torch.nn.Parameter)
    sae.threshold.copy_(torch.arange(32.0))
    perm = torch.randperm(32)
    assert permute_latents_(sae, perm)
    assert torch.equal(sae.threshold, perm.float())
    assert not permute_latents_(sae, torch.arange(32))  # identity: nothing moves


def test_sampled_post_step_sorts_latents_by_importance_and_keeps_the_model(monkeypatch):
    sae = make_sae(prefix_mode="sampled", n_sampled_prefixes=4, min_prefix_length=2, d_sae=32)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    tracker = DeadLatentTracker(32, dead_tokens=10**6)
    objective = make_objective(sae.cfg)
    monkeypatch.setattr(objective, "resort_every_tokens", 0)  # re-sort after every step
    x_probe = torch.randn(16, 10)
    for _ in range(3):
        # 8 rows x k=4 over 32 latents: some latents stay silent, so the relabelling below is visible
        out = objective(sae, Batch(torch.randn(8, 10)), dead_mask=tracker.dead_mask(), mse_scale=1.0)
        opt.zero_grad()
        out.loss.backward()
        constrained_adam_step(sae, opt)
        fired_before = out.fired.clone()
        rows_before = sae.W_dec.detach()[fired_before].sum(0)
        with torch.no_grad():
            before = sae(x_probe).x_hat
        perm = objective.post_step(sae, opt, out)
        if perm is not None:  # the caller (the trainer's step) moves its own per-latent counters
            tracker.permute_(perm)
        with torch.no_grad():
            torch.testing.assert_close(sae(x_probe).x_hat, before, rtol=1e-6, atol=1e-6)
        # out.fired was relabelled with the weights: it marks the same decoder rows as before
        assert out.fired.sum() == fired_before.sum() and not out.fired.all()
        torch.testing.assert_close(sae.W_dec.detach()[out.fired].sum(0), rows_before)
        tracker.update(out.fired, 8)
        key = resort_key(objective.importance)
        assert (key[:-1] >= key[1:]).all()  # descending (on the log grid) after the re-sort
    importance = objective.importance
    assert importance[0] > 0 and importance[0] >= 0.5 * importance.max()
    assert "fvu_first_prefix" in out.metrics


def test_sampled_resort_waits_for_enough_tokens(monkeypatch):
    sae = make_sae(prefix_mode="sampled", n_sampled_prefixes=3, d_sae=32)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    objective = make_objective(sae.cfg)
    monkeypatch.setattr(objective, "resort_every_tokens", 100)
    orders = []
    for _ in range(4):  # 64 tokens per step: re-sorts after steps 1 (first) and 3 (128 ≥ 100 tokens)
        out = objective(sae, Batch(torch.randn(64, 10)), dead_mask=None, mse_scale=1.0)
        opt.zero_grad()
        out.loss.backward()
        constrained_adam_step(sae, opt)
        before = sae.W_dec.detach().clone()
        perm = objective.post_step(sae, opt, out)
        orders.append(not torch.equal(before, sae.W_dec))
        assert (perm is not None) == orders[-1]  # a re-sort returns the permutation it applied
    assert orders == [True, False, True, False]


# ------------------------------------------------------------------------------- synthetic hierarchy


@pytest.fixture
def one_thread():
    """Tiny matmuls run faster on one thread, and far faster when the cores are shared (measured 8x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(cfg, data, steps=400, seed=0):
    torch.manual_seed(seed)
    return train_on_synthetic(cfg, data, steps=steps, batch_rows=512)


def test_matryoshka_prefixes_reconstruct_alone_and_recover_parents_better_than_topk(one_thread):
    data = HierarchicalData(
        d_in=40, n_parents=6, children_per_parent=4, seed=2, child_prob=0.5, orthogonal=True
    )
    prefixes = (8, 16, 32)
    base = dict(k=3, d_sae=32, normalize_activations="none")
    # per-row TopK selection for both, so only the loss differs
    matryoshka = _train(SaeConfig.make("matryoshka", activation="topk", prefixes=prefixes, **base), data)
    flat = _train(SaeConfig.make("topk", **base), data)
    x, active = data.sample_with_active(4096)
    m_levels = level_metrics(matryoshka, x)
    f_levels = level_metrics(flat, x, levels=list(prefixes), report=get_method("matryoshka").levels)
    fvu = m_levels["fvu"]
    assert m_levels["kind"] == "prefix" and m_levels["levels"] == list(prefixes)
    assert fvu[0] > fvu[1] > fvu[2]  # strictly better with every wider prefix
    assert fvu[0] < 0.6 and fvu[0] < 0.6 * f_levels["fvu"][0]  # the smallest prefix alone works
    assert m_levels["l0"][0] < m_levels["l0"][-1] <= 3 + 1e-9
    with torch.no_grad():
        m_fired = matryoshka.encode(x).to_dense() > 0
        f_fired = flat.encode(x).to_dense() > 0
    # Absorption: the flat SAE's parent latents stop firing when a child is active; Matryoshka's do not.
    m_recall = data.parent_recall(matryoshka.W_dec, m_fired, active)
    f_recall = data.parent_recall(flat.W_dec, f_fired, active)
    assert m_recall > f_recall + 0.1, (m_recall, f_recall)


def test_hierarchical_data_children_only_with_parent():
    data = HierarchicalData(d_in=16, n_parents=3, children_per_parent=2, seed=0, child_prob=0.7)
    x, active = data.sample_with_active(500)
    P = data.n_parents
    assert (active[:, :P].sum(1) == data.parents_active).all()
    child_rows, child_ids = torch.nonzero(active[:, P:], as_tuple=True)
    assert active[child_rows, data.parent_of[P + child_ids]].all()
    per_parent = torch.stack([active[:, P:][:, data.parent_of[P:] == p].sum(1) for p in range(P)], 1)
    assert per_parent.max() <= 1 and per_parent.float().mean() > 0
    torch.testing.assert_close(data.features.norm(dim=1), torch.ones(data.n_features))


# --------------------------------------------------------------------------------------- CLI + reload


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    from saekit.cli import main

    cache = tmp_path_factory.mktemp("tiny") / "cache"
    assert main(["collect", str(ROOT / "configs/tiny_collect.yaml"), f"out_dir={cache}"]) == 0
    return cache


@pytest.mark.parametrize("config", ["tiny_matryoshka", "tiny_matryoshka_sampled"])
def test_cli_train_and_reload_give_identical_encodes(tiny_cache, tmp_path, config):
    from saekit.cli import main

    run = tmp_path / config
    args = ["train", str(ROOT / f"configs/{config}.yaml"), f"cache_dir={tiny_cache}", f"run_dir={run}"]
    assert main([*args, "progress=false", "total_tokens=2560"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["fvu"] == r["fvu"] for r in rows)  # no NaN
    sae = Sae.load(run / "final").eval()
    again = Sae.load(run / "final").eval()
    x = torch.randn(50, sae.d_in) * 3
    a, b = sae.encode(x), again.encode(x)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert torch.equal(sae.reconstruct(x), again.reconstruct(x))
    if sae.threshold is not None:
        assert (sae.threshold > 0).all()  # the learned inference threshold survived the round trip
    assert sae.cfg.method == "matryoshka"
    levels = level_metrics(sae, x)
    assert levels["kind"] == "prefix"
    assert len(levels["fvu"]) == len(levels["levels"]) and levels["levels"][-1] == sae.d_sae


def test_cli_eval_writes_per_prefix_levels(tiny_cache, tmp_path):
    from saekit.cli import main

    run = tmp_path / "run"
    args = ["train", str(ROOT / "configs/tiny_matryoshka.yaml"), f"cache_dir={tiny_cache}", f"run_dir={run}"]
    assert main([*args, "progress=false", "total_tokens=1280"]) == 0
    assert main(["eval", str(run), "num_sequences=2", "batch_size=2", "max_eval_rows=500"]) == 0
    levels = json.loads((run / "eval.json").read_text())["levels"]
    assert levels["kind"] == "prefix" and levels["levels"] == [16, 64, 256] and levels["rows"] == 500
    assert levels["method"] == "matryoshka"
    assert levels["fvu"][0] > levels["fvu"][-1]


def test_sampled_resume_restores_importance_and_gives_identical_weights(tiny_cache, tmp_path, monkeypatch):
    import shutil

    from saekit.cli import main

    # Each run builds its own objective from the method: make the method's build re-sort every 2 steps.
    method = get_method("matryoshka")
    resort_often = dataclasses.replace(
        method, objective=functools.partial(MatryoshkaObjective, resort_every_tokens=256)
    )
    monkeypatch.setitem(METHODS, "matryoshka", resort_often)
    common = [f"cache_dir={tiny_cache}", "progress=false", "batch_size=128", "checkpoint_every=3"]
    config = str(ROOT / "configs/tiny_matryoshka_sampled.yaml")
    assert main(["train", config, f"run_dir={tmp_path / 'full'}", "total_tokens=1536", *common]) == 0
    assert main(["train", config, f"run_dir={tmp_path / 'half'}", "total_tokens=768", *common]) == 0
    state = json.loads((tmp_path / "half/checkpoints/step_0000003/trainer_state.json").read_text())
    importance = state["objective"]["importance"]
    assert len(importance) == 256 and max(importance) > 0
    shutil.rmtree(tmp_path / "half" / "final")  # interrupted after step 6: resume from the step-3 checkpoint
    assert (
        main(["train", config, f"run_dir={tmp_path / 'half'}", "total_tokens=1536", *common, "--resume"]) == 0
    )
    full, resumed = Sae.load(tmp_path / "full/final"), Sae.load(tmp_path / "half/final")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(resumed, name), getattr(full, name), rtol=0, atol=0, msg=name)
