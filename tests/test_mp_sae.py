"""MP-SAE: the MP-SAE row of algorithms.md §12 (pursuit invariants, adaptive T, unit atoms), gradients
against an independent projection-product reference, hierarchy recovery vs TopK, and the CLI round trip."""

from pathlib import Path

import pytest
import torch

from saekit.cli import main
from saekit.config import SaeConfig
from saekit.errors import ConfigError
from saekit.sae import Sae, init_sae_from_data_, make_objective, mse_scale_from_sample
from saekit.sae.methods.mp import MpObjective, matching_pursuit, merge_repeated_atoms
from saekit.synthetic import HierarchicalData
from saekit.train.step import FixedDeadMask, training_step
from saekit.types import Batch

ROOT = Path(__file__).resolve().parents[1]


def unit_rows(n, d, dtype=torch.float32):
    w = torch.randn(n, d, dtype=dtype)
    return w / w.norm(dim=1, keepdim=True)


def mp_sae(d_in=10, k=4, d_sae=30, **kw):
    """MP-SAE with T = k pursuit steps (MP has no k and no AuxK keys)."""
    sae = Sae(d_in, SaeConfig.make("mp", steps=k, d_sae=d_sae, normalize_activations="none", **kw))
    with torch.no_grad():
        sae.b_dec.copy_(0.3 * torch.randn(d_in))
    return sae


# ----------------------------------------------------------------------------- pursuit invariants


@pytest.mark.parametrize("gram_mode", [False, True])
def test_pursuit_invariants(gram_mode):
    x, D, b = 2 * torch.randn(64, 12), unit_rows(40, 12), 0.5 * torch.randn(12)
    steps = 9
    p = matching_pursuit(x, D, b, steps, keep_residuals=True, gram_mode=gram_mode)
    previous = x - b
    for t in range(steps):
        r, j, c = p.residuals[t], p.indices[:, t], p.coefs[:, t]
        # The residual is orthogonal to the atom just used ...
        assert (r * D[j]).sum(1).abs().max() < 1e-5
        # ... its energy drops by exactly coef² (never increases) ...
        drop = previous.pow(2).sum(1) - r.pow(2).sum(1)
        torch.testing.assert_close(drop, c.pow(2), rtol=1e-4, atol=1e-4)
        assert (r.pow(2).sum(1) <= previous.pow(2).sum(1) + 1e-5).all()
        # ... and the atom was the one most correlated with the previous residual.
        assert torch.equal(j, (previous @ D.t()).argmax(1)) or gram_mode
        previous = r
    assert torch.equal(p.residual, p.residuals[-1])


def test_gram_and_gemm_updates_choose_the_same_atoms():
    x, D = torch.randn(50, 16), unit_rows(80, 16)
    direct = matching_pursuit(x, D, None, 12, gram_mode=False)
    gram = matching_pursuit(x, D, None, 12, gram_mode=True)
    assert torch.equal(direct.indices, gram.indices)
    torch.testing.assert_close(direct.coefs, gram.coefs, rtol=1e-5, atol=1e-5)


def test_exact_decomposition_and_l0_at_most_t():
    x, D, b = (
        torch.randn(40, 8, dtype=torch.float64),
        unit_rows(24, 8, torch.float64),
        torch.randn(8).double(),
    )
    steps = 6
    p = matching_pursuit(x, D, b, steps)
    code = merge_repeated_atoms(p.indices, p.coefs, 24)
    z_d = code.to_dense() @ D
    torch.testing.assert_close(z_d + b + p.residual, x, rtol=1e-6, atol=1e-12)
    assert (code.offsets.diff() <= steps).all() and (code.l0_per_row() <= steps).all()


def test_repeated_atoms_are_merged_into_one_entry():
    indices = torch.tensor([[3, 1, 3, 3], [0, 2, 4, 1]])
    coefs = torch.tensor([[1.0, 2.0, 0.5, 0.25], [1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    code = merge_repeated_atoms(indices, coefs, 5)
    assert code.offsets.tolist() == [0, 2, 6] and code.indices.tolist() == [1, 3, 0, 1, 2, 4]
    assert code.values.tolist() == [2.0, 1.75, 1.0, 4.0, 2.0, 3.0]
    code.values.sum().backward()  # the merge is differentiable: each coefficient counts once
    assert torch.equal(coefs.grad, torch.ones(2, 4))
    # More steps than atoms forces repeats; the merged code still decodes to x − b − r_T.
    x, D = torch.randn(20, 4, dtype=torch.float64), unit_rows(5, 4, torch.float64)
    p = matching_pursuit(x, D, None, 12)
    code = merge_repeated_atoms(p.indices, p.coefs, 5)
    assert (code.offsets.diff() <= 5).all() and code.values.numel() < p.indices.numel()
    torch.testing.assert_close(code.to_dense() @ D + p.residual, x, rtol=1e-6, atol=1e-12)


def test_more_steps_at_inference_never_increase_the_error():
    sae = mp_sae(k=3).eval()
    x = torch.randn(100, 10)
    errors = []
    for steps in range(1, 15):
        sae.activation.steps = steps
        code = sae.encode(x)
        assert (code.l0_per_row() <= steps).all()
        errors.append((sae.decode(code) - x).pow(2).sum(1))
    for before, after in zip(errors, errors[1:], strict=False):
        assert (after <= before + 1e-5).all()
    assert (errors[-1] < errors[0]).all()


# -------------------------------------------------------------------------------- SAE + gradients


def test_training_and_eval_codes_agree_and_aux_columns_are_refused():
    sae = mp_sae()
    x = torch.randn(16, 10)
    train_code = sae(x).code
    eval_code = sae.eval().encode(x)
    assert torch.equal(train_code.indices, eval_code.indices)
    torch.testing.assert_close(train_code.values.detach(), eval_code.values, rtol=1e-6, atol=1e-6)
    # Per-token code: no batch dependence.
    one = sae.encode(x[3:4])
    assert one.indices.tolist() == eval_code.indices[eval_code.offsets[3] : eval_code.offsets[4]].tolist()
    with pytest.raises(ConfigError, match="without AuxK"):
        sae(x, aux_columns=torch.tensor([0, 1]))


def test_gradients_match_a_projection_product_reference():
    """x − x̂ = Π_t (I − d_t d_tᵀ)(x − b): differentiate that, with the same atoms, densely."""
    sae = mp_sae(d_in=6, k=3, d_sae=14)
    x = torch.randn(5, 6)
    out = sae(x)
    (out.x_hat - x).pow(2).sum().backward()
    got = (sae.W_dec.grad.clone(), sae.b_dec.grad.clone())
    assert sae.W_enc_T.grad is None and sae.b_enc.grad is None  # the tied pursuit never reads them
    sae.zero_grad()
    picks = matching_pursuit(x, sae.W_dec.detach(), sae.b_dec.detach(), 3).indices
    loss = 0.0
    for row in range(5):
        r = x[row] - sae.b_dec
        for j in picks[row]:
            d = sae.W_dec[j]
            r = (torch.eye(6) - torch.outer(d, d)) @ r
        loss = loss + r.pow(2).sum()
    loss.backward()
    torch.testing.assert_close(got[0], sae.W_dec.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], sae.b_dec.grad, rtol=1e-4, atol=1e-5)
    unused = torch.ones(14, dtype=torch.bool)
    unused[picks.flatten()] = False
    assert unused.any() and torch.count_nonzero(got[0][unused]) == 0


def test_atoms_stay_unit_norm_and_encoder_stays_tied_after_optimiser_steps():
    sae = mp_sae()
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    objective = make_objective(sae.cfg)
    assert isinstance(objective, MpObjective)
    every_latent_dead = FixedDeadMask(torch.ones(30, dtype=torch.bool))  # MP must not train AuxK anyway
    for _ in range(5):
        x = torch.randn(32, 10)
        # objective → backward → constrained Adam step → post_step (re-ties W_enc = W_decᵀ)
        out = training_step(sae, objective, optimizer, Batch(x), mse_scale=1.0, tracker=every_latent_dead)
        assert (sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-5
        assert torch.equal(sae.W_enc, sae.W_dec.t())
        assert out.losses["aux"] == 0.0 and out.metrics["l0"] <= 4


# ------------------------------------------------------------------------------ hierarchy recovery


def hierarchy(seed):
    """HierarchicalData (one parent per row, a child half of the time) whose child directions contain
    0.3 of their parent's direction — a child concept carries its parent, as in the MP-SAE toy tree."""
    data = HierarchicalData(d_in=32, n_parents=6, children_per_parent=4, seed=seed, parents_active=1)
    f = data.features.clone()
    for i in range(data.n_parents, data.n_features):
        parent = f[data.parent_of[i]]
        own = f[i] - (f[i] @ parent) * parent
        f[i] = 0.3 * parent + (1 - 0.3**2) ** 0.5 * own / own.norm()
    data.features = f / f.norm(dim=1, keepdim=True)
    return data


def child_recovery(activation, seed, steps=400):
    torch.manual_seed(seed)
    data = hierarchy(seed)
    common = dict(d_sae=data.n_features, normalize_activations="none", init_b_dec="zeros")
    if activation == "mp":
        cfg = SaeConfig.make("mp", steps=2, **common)
    else:
        cfg = SaeConfig.make(activation, k=2, k_aux=0, **common)
    sae = Sae(data.d_in, cfg)
    sample = data.sample(2048)
    init_sae_from_data_(sae, sample)
    objective = make_objective(cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    scale = mse_scale_from_sample(sample)
    for _ in range(steps):
        training_step(sae, objective, optimizer, Batch(data.sample(256)), mse_scale=scale)
    return data.recovery_score(sae.W_dec, "children")


def test_mp_recovers_child_directions_better_than_topk():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these tiny ops ran ~10x slower on 2 threads of a busy 2-core machine
    try:
        mp = [child_recovery("mp", seed) for seed in (0, 1)]
        topk = [child_recovery("topk", seed) for seed in (0, 1)]
    finally:
        torch.set_num_threads(threads)
    assert sum(mp) / 2 > sum(topk) / 2 + 0.03, (mp, topk)


# ---------------------------------------------------------------------------------------- CLI


def test_cli_train_mp_and_reload(tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert (
        main(
            [
                "collect",
                str(ROOT / "configs/tiny_collect.yaml"),
                f"out_dir={cache}",
                "max_tokens=1200",
                "hookpoints=[blocks.1.hook_resid_post]",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                str(ROOT / "configs/tiny_mp_sae.yaml"),
                f"cache_dir={cache}",
                f"run_dir={run}",
                "total_tokens=1024",
                "progress=false",
            ]
        )
        == 0
    )
    sae, again = Sae.load(run / "final").eval(), Sae.load(run / "final").eval()
    assert sae.cfg.method == "mp" and sae.activation.steps == sae.cfg.params.steps == 8
    # The checkpoint stores the tied encoder (up to the trainer's final, rounding-level renormalisation).
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t(), rtol=0, atol=1e-6)
    assert (sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-5
    x = 4 * torch.randn(30, sae.d_in)
    a, b = sae.encode(x), again.encode(x)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert (a.l0_per_row() <= sae.cfg.params.steps).all()
