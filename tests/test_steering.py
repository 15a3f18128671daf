"""Steering intervention (algorithms.md §9.2), output/input scores, logit lens, generation, live encoding."""

import math

import pytest
import torch

from saekit.analysis import (
    boost_code,
    coefficient_sweep,
    dense_code_of,
    encode_text,
    logit_lens,
    output_score,
    output_score_terms,
    output_scores,
    steer,
    steer_activations,
)
from saekit.analysis.format import prompt_tokens
from saekit.analysis.steering import steering_splice
from saekit.config import SaeConfig

HOOK = "blocks.1.hook_resid_post"
PROMPT = "The function returns"


@pytest.fixture(scope="module")
def model():
    from saekit.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="module")
def sae(model):
    """An SAE initialised on the tiny model's activations, with a non-trivial activation scale."""
    from saekit.data import chunk_tokens, iter_texts
    from saekit.models import bos_token_id, capture, tokenizer_of
    from saekit.sae import Sae, estimate_act_scale, init_sae_from_data_

    torch.manual_seed(0)
    seqs = chunk_tokens(
        iter_texts("embedded"), tokenizer_of(model), 32, bos_id=bos_token_id(model), max_sequences=8
    )
    x = capture(model, torch.stack(list(seqs)), [HOOK]).acts[HOOK][:, 1:].reshape(-1, 64)
    sae = Sae(
        64,
        SaeConfig.make("topk", k=4, d_sae=128),
        act_scale=estimate_act_scale(x, "mean_norm_sqrt_d"),
        hookpoint=HOOK,
        model_id="tiny",
    )
    init_sae_from_data_(sae, sae.scale_input(x))
    assert abs(sae.act_scale - 1.0) > 1e-3
    return sae.eval()


def _acts(model, text=PROMPT):
    from saekit.models import capture

    return capture(model, prompt_tokens(model, text), [HOOK]).acts[HOOK]


def _dense(code):
    out = torch.zeros(code.batch_size, code.d_sae, dtype=torch.float64)
    return out.index_put_((code.row_ids(), code.indices), code.values.double(), accumulate=True)


def test_zero_coefficient_leaves_logits_unchanged(model, sae):
    from saekit.models import logits_of, run_with_splice

    tokens = prompt_tokens(model, PROMPT)
    clean = logits_of(model, tokens)
    spliced = run_with_splice(model, tokens, HOOK, steering_splice(sae, {5: 0.0, 17: 0.0}, from_position=0))
    torch.testing.assert_close(spliced, clean, rtol=0, atol=1e-4)
    # the SAE alone is lossy: without the error term the same splice would move the logits
    lossy = run_with_splice(
        model, tokens, HOOK, lambda a: sae.reconstruct(a.reshape(-1, 64)).reshape(a.shape)
    )
    assert (lossy - clean).abs().max() > 1e-2


def test_boost_touches_only_last_position_and_chosen_latent(model, sae):
    x = _acts(model)
    seq = x.shape[1]
    code = sae.encode(x.reshape(-1, 64), training=False)
    mask = torch.zeros(1, seq, dtype=torch.bool)
    mask[0, -1] = True
    latent, coef = 7, 3.0
    diff = _dense(boost_code(code, torch.tensor([[latent]]), torch.tensor([[coef]]), mask)) - _dense(code)
    row_max = _dense(code)[-1].max()
    assert row_max > 0
    assert diff[-1, latent].item() == pytest.approx(coef * row_max.item(), rel=1e-6)
    diff[-1, latent] = 0.0
    assert (diff == 0).all()

    out = steer_activations(sae, x, torch.tensor([[latent]]), torch.tensor([[coef]]), mask)
    torch.testing.assert_close(out[:, :-1], x[:, :-1], rtol=0, atol=1e-5)
    # the last position moves along the latent's decoder direction only (raw space: / act_scale)
    expected = coef * row_max.item() * sae.W_dec[latent].detach() / sae.act_scale
    torch.testing.assert_close(out[0, -1] - x[0, -1], expected.float(), rtol=1e-4, atol=1e-4)


def test_logit_lens_applies_final_norm_before_unembedding():
    from saekit.models import load_model

    model = load_model("tiny")  # a private copy: its final-norm weights are changed below
    torch.manual_seed(1)
    norm = dict(model.ln_final.named_parameters())
    with torch.no_grad():
        norm["_original_component.weight"].copy_(torch.rand(64) + 0.5)
        norm["_original_component.bias"].copy_(torch.randn(64))
    sae = type("Fake", (), {"W_dec": torch.randn(3, 64) * 5.0})()
    W_U = dict(model.unembed.named_parameters())["_original_component.weight"]
    b_U = dict(model.unembed.named_parameters()).get("_original_component.bias")
    direction = sae.W_dec[2]
    normed = torch.nn.functional.layer_norm(
        direction, (64,), norm["_original_component.weight"], norm["_original_component.bias"], eps=1e-5
    )
    logits = normed @ W_U.T + (0 if b_U is None else b_U)
    torch.testing.assert_close(logit_lens(model, sae, 2), torch.softmax(logits, -1), rtol=1e-4, atol=1e-6)
    unnormed = torch.softmax(direction @ W_U.T + (0 if b_U is None else b_U), -1)
    assert (logit_lens(model, sae, 2) - unnormed).abs().max() > 1e-3


def test_output_score_is_rank_times_prob(model, sae):
    from saekit.models import run_with_splice

    latent = 11
    got = output_score(model, sae, latent)
    assert got["output_score"] == pytest.approx(got["rank_score"] * got["prob_score"], rel=1e-6)
    # by hand: boost amp * max at the last position of the neutral prompt, rank T_i in q
    tokens = prompt_tokens(model, "From my experience,")
    lens = torch.topk(logit_lens(model, sae, latent), 20).indices
    logits = run_with_splice(model, tokens, HOOK, steering_splice(sae, {latent: 10.0}, tokens.shape[1] - 1))
    q = torch.softmax(logits[0, -1], -1)
    best_rank = min(int((q > q[t]).sum()) for t in lens)
    assert got["rank_score"] == pytest.approx(1 - best_rank / q.numel(), abs=1e-6)
    assert got["prob_score"] == pytest.approx(float(q[lens].max()), rel=1e-4)


def test_output_scores_batched_in_unit_range(model, sae):
    scores = output_scores(model, sae, range(40), batch_size=16)
    single = output_score(model, sae, 25)
    for name in ("rank_score", "prob_score", "output_score"):
        assert ((scores[name] >= 0) & (scores[name] <= 1)).all(), name
        assert scores[name][25].item() == pytest.approx(single[name], rel=1e-4, abs=1e-6)
    torch.testing.assert_close(scores["output_score"], scores["rank_score"] * scores["prob_score"])


def test_output_score_terms_by_hand():
    q = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    rank, prob = output_score_terms(q, torch.tensor([[2, 3]]))
    assert rank.item() == pytest.approx(1 - 2 / 4) and prob.item() == pytest.approx(0.15)


def test_fixed_seed_gives_identical_generations(model, sae):
    a = steer(model, sae, PROMPT, {3: 6.0}, max_new_tokens=6, seed=123, temperature=1.0)
    b = steer(model, sae, PROMPT, {3: 6.0}, max_new_tokens=6, seed=123, temperature=1.0)
    assert (a.default_ids, a.steered_ids) == (b.default_ids, b.steered_ids)
    assert a.default_text == b.default_text and a.steered_text == b.steered_text
    other = [
        steer(model, sae, PROMPT, {3: 6.0}, max_new_tokens=6, seed=s, temperature=1.0).default_ids
        for s in (1, 2)
    ]
    assert any(ids != a.default_ids for ids in other), "different seeds should sample differently"
    assert a.kl > 0 and a.next_token_shift[0]["delta"] > 0 > a.next_token_shift[-1]["delta"]
    deltas = [row["delta"] for row in a.next_token_shift]
    assert deltas == sorted(deltas, reverse=True)


def test_zero_steering_generates_the_default_text(model, sae):
    from saekit.models import logits_of

    result = steer(model, sae, PROMPT, {9: 0.0}, max_new_tokens=5, seed=0, temperature=0.0)
    assert result.steered_ids == result.default_ids and result.kl == pytest.approx(0.0, abs=1e-6)
    tokens = prompt_tokens(model, PROMPT)  # greedy = repeated argmax of the clean model
    for expected in result.default_ids:
        assert int(logits_of(model, tokens)[0, -1].argmax()) == expected
        tokens = torch.cat([tokens, torch.tensor([[expected]])], 1)


def test_coefficient_sweep(model, sae):
    from saekit.models import logits_of

    rows = coefficient_sweep(model, sae, PROMPT, 4, [0.0, 2.0, 8.0], target_token=" the")
    assert [r["coef"] for r in rows] == [0.0, 2.0, 8.0]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[2]["kl"] > 0
    clean = logits_of(model, prompt_tokens(model, PROMPT))[0, -1]
    assert rows[0]["target_logit"] == pytest.approx(float(clean[rows[0]["target_id"]]), abs=1e-4)
    assert len({r["target_logit"] for r in rows}) == 3


def test_encode_text_matches_dense_code(model, sae):
    acts = encode_text(model, sae, PROMPT, top_m=5, per_token=3)
    dense = dense_code_of(sae, _acts(model)[0])
    assert acts.special[0] and not acts.special[1:].any()
    dense[0] = 0.0  # BOS never ranks a latent
    strongest = torch.topk(dense.max(0).values, 5).indices.tolist()
    assert acts.latents == strongest
    torch.testing.assert_close(acts.values, dense[:, strongest])
    assert len(acts.tokens) == len(acts.token_ids) == len(acts.per_token) == dense.shape[0]
    for t, pairs in enumerate(acts.per_token[1:], start=1):
        assert [i for i, _ in pairs] == torch.topk(dense[t], len(pairs)).indices.tolist()


def test_out_of_range_latent_is_a_clear_error(model, sae):
    from saekit.errors import ConfigError

    with pytest.raises(ConfigError, match="d_sae=128"):
        steer(model, sae, PROMPT, {128: 1.0}, max_new_tokens=1)


def test_sweep_text_per_coefficient_matches_single_steered_generation(model, sae):
    """Each coefficient's batched greedy text equals `steer` run alone at that coefficient (temperature 0)."""
    coefs = [0.0, 6.0, 30.0]
    rows = coefficient_sweep(model, sae, PROMPT, 4, coefs, max_new_tokens=4)
    for row in rows:
        alone = steer(model, sae, PROMPT, {4: row["coef"]}, max_new_tokens=4, seed=0, temperature=0.0)
        assert row["text"] == alone.steered_text
    assert (
        rows[0]["text"] == steer(model, sae, PROMPT, {4: 0.0}, max_new_tokens=4, temperature=0.0).default_text
    )
    assert "text" not in coefficient_sweep(model, sae, PROMPT, 4, [1.0])[0]


def test_sweep_of_several_latents_steers_them_together(model, sae):
    from saekit.models import run_with_splice

    rows = coefficient_sweep(model, sae, PROMPT, [4, 9], [0.0, 5.0])
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    joint = steering_splice(sae, {4: 5.0, 9: 5.0}, prompt_tokens(model, PROMPT).shape[1] - 1)
    logits = run_with_splice(model, prompt_tokens(model, PROMPT), HOOK, joint)[0, -1]
    assert rows[1]["top_token"] == model.tokenizer.decode([int(logits.argmax())])
    alone = coefficient_sweep(model, sae, PROMPT, 4, [5.0])[0]
    assert rows[1]["kl"] != pytest.approx(alone["kl"])


def test_steerability_readout(model, sae):
    from saekit.analysis.decoder import logit_lens
    from saekit.analysis.steerability import steerability

    rows = steerability(model, sae, [4, 9, 17], coef=0.0, batch_size=2)
    assert sorted(r["latent"] for r in rows) == [4, 9, 17]
    for row in rows:  # coefficient 0: nothing gained, nothing lost
        assert row["target_gain"] == pytest.approx(0.0, abs=1e-6)
        assert row["kl"] == pytest.approx(0.0, abs=1e-6) and row["ce_cost"] == pytest.approx(0.0, abs=1e-5)
    rows = steerability(model, sae, [4, 9, 17], coef=20.0)
    assert [r["efficiency"] for r in rows] == sorted((r["efficiency"] for r in rows), reverse=True)
    by_latent = {r["latent"]: r for r in rows}
    own = model.tokenizer.decode([int(logit_lens(model, sae, 9).argmax())])
    assert by_latent[9]["target"] == own and by_latent[9]["kl"] > 0
    assert by_latent[9]["perplexity_ratio"] == pytest.approx(math.exp(by_latent[9]["ce_cost"]), rel=1e-5)
    fixed = steerability(model, sae, [4, 9], coef=20.0, target_token=" the")
    assert {r["target"] for r in fixed} == {" the"}
