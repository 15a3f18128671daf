"""Gradient SAEs (g-SAE): the g-SAE row of algorithms.md §12, the trainer's x/g alignment, and the CLI path
collect (with gradients) → train → reload → eval in both selection modes.

The harvested gradient itself is checked against finite differences of the summed next-token CE in
tests/test_models.py (test_captured_grads_match_finite_differences_in_double_precision) and its storage
alignment in tests/test_collect.py; here we check the quantity g-SAE actually uses, ⟨g, d_i⟩, against a
finite difference of the loss along a decoder direction.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from saekit.activations import CacheWriter
from saekit.cli import main
from saekit.config import SaeConfig, TrainConfig
from saekit.errors import DataError
from saekit.models import bos_token_id, capture, load_model, run_with_splice, tokenizer_of
from saekit.sae import METHODS, Sae, get_method
from saekit.sae.methods.gsae import WithGradients, gradient_scores
from saekit.sae.objective import ReconstructionAuxK
from saekit.train import train
from saekit.types import Batch

ROOT = Path(__file__).resolve().parents[1]


def make_pair(d_in=12, k=4, d_sae=40, beta=1.0, score_dtype=torch.float32, **kw):
    """A g-SAE (score GEMM in `score_dtype`) and a TopK SAE with identical (untied, shifted) weights."""
    gsae = Sae(
        d_in,
        SaeConfig.make("gsae", k=k, d_sae=d_sae, grad_beta=beta, normalize_activations="none", **kw),
    )
    with torch.no_grad():
        gsae.W_enc.add_(0.3 * torch.randn_like(gsae.W_enc))
        gsae.b_dec.copy_(0.5 * torch.randn(d_in))
        gsae.b_enc.copy_(0.2 * torch.randn(d_sae) + 0.5)
    gsae.activation.score_dtype = score_dtype
    topk = Sae(d_in, SaeConfig.make("topk", k=k, d_sae=d_sae, normalize_activations="none"))
    topk.load_state_dict(gsae.state_dict())
    return gsae, topk


def rows_of(code):
    return [
        sorted(code.indices[a:b].tolist()) for a, b in zip(code.offsets[:-1], code.offsets[1:], strict=True)
    ]


def same_code(a, b):
    assert rows_of(a) == rows_of(b)
    dense_a, dense_b = a.to_dense(), b.to_dense()
    torch.testing.assert_close(dense_a, dense_b, rtol=0, atol=0)


# ------------------------------------------------------------------------------- §12 properties


@pytest.mark.parametrize("training", [True, False])
def test_beta_zero_or_zero_gradient_is_exactly_topk(training):
    x, g = torch.randn(16, 12), torch.randn(16, 12)
    gsae, topk = make_pair(beta=0.0)
    same_code(gsae.encode(x, Batch(x, grads=g), training=training), topk.encode(x, training=training))
    gsae, topk = make_pair(beta=2.0)
    zero = torch.zeros_like(g)
    same_code(gsae.encode(x, Batch(x, grads=zero), training=training), topk.encode(x, training=training))
    # ... while a real gradient does change the selection (so the comparison above can fail).
    assert rows_of(gsae.encode(x, Batch(x, grads=5 * g), training=training)) != rows_of(topk.encode(x))


@pytest.mark.parametrize("c", [2.0, 0.25, 3.0])
def test_scaling_g_by_c_equals_scaling_beta_by_c(c):
    x, g = torch.randn(32, 12), torch.randn(32, 12)
    base, _ = make_pair(beta=0.7)
    scaled_beta, _ = make_pair(beta=0.7 * c)
    scaled_beta.load_state_dict(base.state_dict())
    code_g = base.encode(x, Batch(x, grads=c * g), training=True)
    code_beta = scaled_beta.encode(x, Batch(x, grads=g), training=True)
    same_code(code_g, code_beta)


def test_selection_is_topk_of_the_score_and_values_are_relu_h():
    x, g = torch.randn(24, 12), 3 * torch.randn(24, 12)
    gsae, _ = make_pair(beta=1.5)
    out = gsae(x, Batch(x, grads=g), keep_pre_acts=True)
    h = out.pre_acts
    score = h * (1 + 1.5 * (g @ gsae.W_dec.detach().t()).abs())
    expect = torch.sort(score, dim=1, descending=True).indices[:, :4]
    assert rows_of(out.code) == [sorted(r.tolist()) for r in expect]
    rows = out.code.row_ids()
    torch.testing.assert_close(out.code.values.detach(), torch.relu(h[rows, out.code.indices]))
    # The score really differs from h there, so "values = ReLU(h), not the score" is a real check.
    assert not torch.allclose(torch.relu(score[rows, out.code.indices]), out.code.values.detach())
    torch.testing.assert_close(gradient_scores(h, g, gsae.W_dec.detach(), 1.5), score)


def test_bf16_score_gemm_keeps_the_exact_properties_and_nearly_the_fp32_selection():
    x, g = torch.randn(64, 12), 3 * torch.randn(64, 12)
    gsae, topk = make_pair(beta=1.0, score_dtype=torch.bfloat16)
    exact, _ = make_pair(beta=1.0)
    exact.load_state_dict(gsae.state_dict())
    fast, ref = gsae.encode(x, Batch(x, grads=g)), exact.encode(x, Batch(x, grads=g))
    overlap = sum(len(set(a) & set(b)) for a, b in zip(rows_of(fast), rows_of(ref), strict=True))
    assert overlap >= 0.9 * 64 * 4
    assert rows_of(fast) != rows_of(topk.encode(x))
    rows = fast.row_ids()
    h = (x - gsae.b_dec) @ gsae.W_enc + gsae.b_enc
    torch.testing.assert_close(fast.values.detach(), torch.relu(h[rows, fast.indices]).detach())
    same_code(gsae.encode(x, Batch(x, grads=torch.zeros_like(g))), topk.encode(x))
    doubled_beta, _ = make_pair(beta=2.0, score_dtype=torch.bfloat16)
    doubled_beta.load_state_dict(gsae.state_dict())
    same_code(gsae.encode(x, Batch(x, grads=2 * g)), doubled_beta.encode(x, Batch(x, grads=g)))


def test_missing_gradients_fail_in_training_and_fall_back_to_topk_at_inference():
    x, g = torch.randn(8, 12), torch.randn(8, 12)
    gsae, topk = make_pair(beta=1.0)
    with pytest.raises(DataError, match="capture_grads=true"):
        gsae(x)  # module in training mode, no gradients
    with pytest.raises(DataError, match="capture_grads=true"):
        gsae.encode(x, Batch(x), training=True)
    same_code(gsae.encode(x, training=False), topk.encode(x, training=False))
    gsae.activation.select_mode = "plain"
    same_code(gsae.encode(x, Batch(x, grads=5 * g), training=False), topk.encode(x, training=False))
    gsae.activation.select_mode = "grad"
    assert rows_of(gsae.encode(x, Batch(x, grads=5 * g), training=False)) != rows_of(topk.encode(x))


def test_gradients_are_sparse_and_match_a_dense_masked_reference():
    x, g = torch.randn(6, 12), 4 * torch.randn(6, 12)
    gsae, _ = make_pair(beta=1.0)
    out = gsae(x, Batch(x, grads=g))
    (out.x_hat - x).pow(2).sum().backward()
    params = (gsae.W_enc_T, gsae.b_enc, gsae.W_dec, gsae.b_dec)
    got = [p.grad.clone() for p in params]
    unselected = torch.ones(40, dtype=torch.bool)
    unselected[out.code.indices] = False
    assert torch.count_nonzero(gsae.W_enc_T.grad.t()[:, unselected]) == 0
    assert torch.count_nonzero(gsae.W_dec.grad[unselected]) == 0
    gsae.zero_grad()
    h = (x - gsae.b_dec) @ gsae.W_enc + gsae.b_enc
    mask = torch.zeros_like(h).scatter(1, out.code.indices.view(6, 4), 1.0)
    x_hat = (torch.relu(h) * mask) @ gsae.W_dec + gsae.b_dec
    (x_hat - x).pow(2).sum().backward()
    for a, p in zip(got, params, strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-5)


def test_decoder_direction_derivative_matches_finite_difference_on_tiny_model():
    """⟨g, d_i⟩ (what the score uses) equals dL/dε of the summed CE when x moves along d_i, with the act
    scale applied as in training (g divided by c in the normalised space)."""
    model = load_model("tiny").to(torch.float64)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(3, len(tokenizer_of(model)), (2, 8), generator=gen)
    tokens[:, 0] = bos_token_id(model)
    hook = "blocks.0.hook_resid_post"
    cap = capture(model, tokens, [hook], with_grads=True)
    sae = Sae(64, SaeConfig.make("gsae", k=4, d_sae=32), act_scale=2.5).double()
    g_scaled = cap.grads[hook].double() / sae.act_scale  # what the trainer hands the activation

    def loss_along(direction, b, t, eps):
        def bump(act):
            act = act.clone()
            act[b, t] += (eps / sae.act_scale) * direction  # eps in the normalised space
            return act

        with torch.no_grad():
            logits = run_with_splice(model, tokens, hook, bump)
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
        return ce.item()

    for b, t, i in [(0, 2, 5), (1, 5, 17), (1, 1, 30)]:
        d = sae.W_dec[i].detach()
        numeric = (loss_along(d, b, t, 1e-5) - loss_along(d, b, t, -1e-5)) / 2e-5
        analytic = (g_scaled[b, t] @ d).item()
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8)
        assert abs(analytic) > 1e-6


# ------------------------------------------------------------------------- x/g alignment, trainer


SPY_CALLS = []


class AlignmentSpy(ReconstructionAuxK):
    """g-SAE's own objective, checking first that the batch's gradients are its rows' gradients."""

    def __call__(self, sae, batch, **kw):
        """Rows of the cache below satisfy grads = 2·acts + 1 (raw); the trainer scales acts by c and grads
        by 1/c, so in the batch it hands over: c·grads = 2·acts/c + 1."""
        c = sae.act_scale
        torch.testing.assert_close(batch.grads * c, 2 * batch.acts / c + 1, rtol=1e-5, atol=1e-5)
        SPY_CALLS.append(len(batch))
        return super().__call__(sae, batch, **kw)


def test_trainer_keeps_x_and_g_aligned_through_shuffling(tmp_path, monkeypatch):
    # The trainer builds its objective from the method's declaration: swap in the spy for this test only.
    monkeypatch.setitem(METHODS, "gsae", dataclasses.replace(get_method("gsae"), objective=AlignmentSpy))
    header = {
        "model_id": "synthetic",
        "hookpoint": "blocks.0.hook_resid_post",
        "d_in": 6,
        "dtype": "float32",
        "context_length": 8,
        "tokenizer_fingerprint": "t",
        "corpus_fingerprint": "c",
        "collect_config": {},
        "shard_tokens": 50,
        "has_grads": True,
        "first_sequence": 0,
    }
    writer = CacheWriter.create(tmp_path / "cache" / "blocks.0.hook_resid_post", header)
    n = 230
    acts = torch.randn(n, 6) + torch.arange(n).unsqueeze(1) * 0.01  # every row distinct
    ids = torch.arange(n)
    writer.add(acts, ids % 97, ids // 8, ids % 8, grads=2 * acts + 1)
    writer.finish(num_sequences=n // 8 + 1, next_sequence=n // 8 + 1, excluded={})
    SPY_CALLS.clear()
    cfg = TrainConfig(
        sae=SaeConfig.make("gsae", k=2, d_sae=12),
        cache_dir=str(tmp_path / "cache"),
        run_dir=str(tmp_path / "run"),
        total_tokens=320,
        batch_size=32,
        shuffle_buffer_tokens=100,
        norm_estimation_tokens=100,
        progress=False,
    )
    train(cfg)
    assert len(SPY_CALLS) == 10 and all(size == 32 for size in SPY_CALLS)


# --------------------------------------------------------------------------------------- CLI


def test_cli_collect_grads_train_reload_and_eval_both_modes(tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert (
        main(
            ["collect", str(ROOT / "configs/tiny_collect_grads.yaml"), f"out_dir={cache}", "max_tokens=1200"]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                str(ROOT / "configs/tiny_gsae.yaml"),
                f"cache_dir={cache}",
                f"run_dir={run}",
                "total_tokens=1024",
                "progress=false",
            ]
        )
        == 0
    )
    sae = Sae.load(run / "final").eval()
    assert sae.cfg.method == "gsae" and sae.activation.beta == 1.0
    saved = Sae.load(run / "final").eval()
    x, g = 3 * torch.randn(20, sae.d_in), torch.randn(20, sae.d_in)
    for batch in (None, Batch(x, grads=g)):
        a, b = sae.encode(x, batch), saved.encode(x, batch)
        assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    # Grad-mode selection through the eval feed equals encoding with a gradient batch directly.
    fed = WithGradients(sae, [(x, g)])
    code = fed.encode(x)
    direct = sae.encode(x, Batch(x, grads=g))  # raw x and raw dL/dx
    assert torch.equal(code.indices, direct.indices)
    with pytest.raises(DataError, match="misaligned"):
        WithGradients(sae, [(x + 1, g)]).encode(x)

    assert main(["eval", str(run), "num_sequences=4", "batch_size=2", "max_eval_rows=600"]) == 0
    result = json.loads((run / "eval.json").read_text())
    modes = result["selection_modes"]
    assert modes["top_level"] == "plain"
    grad = modes["grad"]
    for block in (grad["cached"], grad["heldout"], result["cached"], result["heldout"]):
        assert 0 <= block["fvu"] < 10 and block["l0_mean"] <= sae.cfg.params.k
    assert grad["splice"]["positions"] == result["splice"]["positions"] > 0
    # Same clean model and text, so the clean CE agrees; the SAE splice may differ between modes.
    assert grad["splice"]["ce_loss"]["clean"] == pytest.approx(result["splice"]["ce_loss"]["clean"])
