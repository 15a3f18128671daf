"""Metric definitions of the evaluation extras on hand-computable cases (issue 15, item 5)."""

import pytest
import torch

from saekit.eval.absorption import absorption_scores
from saekit.eval.consistency import duplicate_latents, matched_correlation, seed_consistency
from saekit.eval.ground_truth import default_data, recovery_scores, synthetic_benchmark
from saekit.eval.recon_extras import ReconExtras, dense_latent_analysis, prefix_widths, shrinkage
from saekit.sae import Sae, SaeConfig
from saekit.synthetic import CorrelatedHierarchicalData


def _sae(W_dec, k, method="topk", **keys):
    """An SAE with the given decoder rows, tied encoder, zero biases, no input scaling."""
    d_sae, d_in = W_dec.shape
    sae = Sae(d_in, SaeConfig.make(method, k=k, d_sae=d_sae, normalize_activations="none", **keys))
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc_T.copy_(W_dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


# ---------------------------------------------------------------------------------------- shrinkage etc.


def test_shrinkage_of_a_half_scale_reconstruction():
    x = torch.randn(50, 6, dtype=torch.float64)
    out = shrinkage(x, 0.5 * x)
    assert out["l2_ratio"] == pytest.approx(0.5)
    assert out["relative_reconstruction_bias"] == pytest.approx(0.5)  # E|x̂|² / E<x,x̂> = 0.25 / 0.5
    assert out["l2_norm_out"] == pytest.approx(0.5 * out["l2_norm_in"])


def test_dense_latent_analysis_counts_by_hand():
    freq = torch.tensor([0.5, 0.2, 0.05, 0.0], dtype=torch.float64)
    out = dense_latent_analysis(freq, top=2)
    assert out["fraction_above_0.1"] == 0.5 and out["fraction_above_0.01"] == 0.75
    assert out["firing_share_above_0.1"] == pytest.approx(0.7 / 0.75)
    assert [d["latent"] for d in out["densest"]] == [0, 1]


def test_prefix_fvu_orders_by_firing_frequency():
    # orthonormal dictionary, each row one latent: latent 3 fires on 3 rows, latent 2 on 2, 1 on 1, 0 never
    eye = torch.eye(4)
    sae = _sae(eye, k=1)
    x = torch.stack([eye[3], eye[3], eye[3], eye[2], eye[2], eye[1]]) * 2.0
    stats = ReconExtras(4, prefix_widths(4, count=3))
    stats.update(x)
    out = stats.compute(sae)
    prefix = out["prefix_fvu"]
    assert prefix["widths"] == [1, 2, 4]
    freq_order = prefix["fvu_frequency_order"]
    # total variance: 3·14/9 + 2·26/9 + 38/9 = 132/9; each unreconstructed row costs |2e_i|² = 4
    total = 132 / 9
    assert freq_order == pytest.approx([12 / total, 4 / total, 0.0])  # keep {3}, {3, 2}, all
    assert prefix["fvu_index_order"] == pytest.approx([24 / total, 20 / total, 0.0])  # keep {0}, {0, 1}, all
    assert out["shrinkage"]["l2_ratio"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- duplicates, seeds


def test_duplicate_latents_find_a_copied_decoder_row():
    W = torch.eye(5)[:4].clone()
    W[3] = W[0]  # latent 3 duplicates latent 0
    out = duplicate_latents(_sae(W, k=1))
    assert out["decoder"]["max_cosine"] == pytest.approx(1.0)
    assert out["decoder"]["fraction_above_0.9"] == 0.5  # latents 0 and 3
    assert out["encoder"]["mean_max_cosine"] == pytest.approx(0.5)  # 1, 0, 0, 1


def test_seed_consistency_is_one_for_a_permutation_and_low_for_random():
    torch.manual_seed(0)
    W = torch.randn(40, 16)
    same = seed_consistency(W, W[torch.randperm(40)])
    assert same["matched_mean_cosine"] == pytest.approx(1.0)
    assert same["mean_max_cosine_a_to_b"] == pytest.approx(1.0)
    other = seed_consistency(W, torch.randn(40, 16))
    assert other["matched_mean_cosine"] < 0.6 and other["mean_max_cosine_a_to_b"] < 0.8


def test_matching_is_one_to_one():
    sim = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    # best pair (0,0) first would force (1,1)=0.1; the one-to-one optimum is (0,1)+(1,0) = 0.825
    value, method = matched_correlation(sim)
    expected = 0.825 if method == "hungarian" else 0.5
    assert value == pytest.approx(expected)


# ---------------------------------------------------------------------------------------- ground truth


def test_mcc_is_one_for_a_recovered_dictionary_and_low_for_a_random_one():
    data = default_data(0)  # the benchmark's own setting: 96 true features in R^64
    x, codes = data.sample_with_codes(3000)
    perm = torch.randperm(data.n_features)
    recovered = recovery_scores(codes, codes[:, perm], data.features, data.features[perm])
    assert recovered["mcc"] == pytest.approx(1.0)
    assert recovered["recall"] == 1.0 and recovered["precision"] == 1.0
    torch.manual_seed(1)  # a TopK SAE with a random dictionary, at the data's sparsity
    rand = Sae(64, SaeConfig.make("topk", k=4, d_sae=2 * data.n_features, normalize_activations="none"))
    code = rand.eval().encode(x)
    rand_acts = torch.zeros(len(x), rand.d_sae)
    rand_acts[code.row_ids(), code.indices] = code.values.detach()
    random = recovery_scores(codes, rand_acts, data.features, rand.W_dec)
    assert random["mcc"] < 0.5 and random["recall"] == 0.0


def test_synthetic_benchmark_trains_each_method_and_skips_gradient_methods():
    out = synthetic_benchmark(["batchtopk", "gsae"], steps=10, batch_rows=128, eval_rows=1024)
    scores = out["methods"]["batchtopk"]
    assert 0 <= scores["mcc"] <= 1 and 0 <= scores["recall"] <= 1 and scores["calibrated"]
    assert scores["l0"] == pytest.approx(round(out["data"]["mean_active"]), rel=0.1)  # calibrated θ
    assert "skipped" in out["methods"]["gsae"]


def test_correlated_hierarchy_has_correlated_parents_and_children_only_with_parents():
    data = CorrelatedHierarchicalData(d_in=32, n_parents=8, children_per_parent=2, seed=0, correlation=0.8)
    _, codes = data.sample_with_codes(20000)
    active = codes > 0
    corr = torch.corrcoef(active[:, :8].float().t())
    assert corr[0, 1] > 0.2 and abs(corr[0, 4]) < 0.05  # same group vs different group
    children = active[:, 8:]
    parents_of_children = active[:, data.parent_of[8:]]
    assert not (children & ~parents_of_children).any()
    assert abs(active.sum(1).float().mean().item() - data.mean_active) < 0.1


# ---------------------------------------------------------------------------------------- absorption


def _planted_absorption(absorbed):
    """Six letters, each with its own orthogonal direction and main latent; for letter 'a', the first
    `absorbed` words are each carried by their own token-specific latent (decoder = letter direction +
    the word's direction), which wins the TopK(1) slot, so the main 'a' latent stays silent on them."""
    torch.manual_seed(0)
    d_in, per_letter, letters = 64, 30, "abcdef"
    dirs = torch.eye(d_in)
    absorbers = [(dirs[0] + dirs[30 + j]) / 2**0.5 for j in range(absorbed)]
    W = torch.cat([dirs[: len(letters)], *(a.unsqueeze(0) for a in absorbers)])
    xs, labels = [], []
    for i, letter in enumerate(letters):
        for j in range(per_letter):
            if letter == "a" and j < absorbed:
                x = (dirs[0] + dirs[30 + j]) * 1.5
            else:
                x = dirs[i] * (1.0 + 0.01 * j)
            xs.append(x + 0.01 * torch.randn(d_in))
            labels.append(letter)
    return _sae(W, k=1), torch.stack(xs), labels


def test_absorption_is_zero_without_and_positive_with_a_planted_absorber():
    sae, x, letters = _planted_absorption(0)
    clean = absorption_scores(sae, x, letters)
    assert clean["mean"]["mean_full_absorption_score"] == 0.0
    assert clean["mean"]["mean_absorption_fraction_score"] == pytest.approx(0.0, abs=1e-6)
    sae, x, letters = _planted_absorption(10)
    planted = absorption_scores(sae, x, letters)
    a = next(d for d in planted["eval_result_details"] if d["first_letter"] == "a")
    assert a["num_probe_true_positives"] > 0
    assert a["num_split_features"] == 1  # absorbers are token-specific, not split features
    assert 0.1 < a["full_absorption_rate"] <= 0.6 and a["mean_absorption_fraction"] > 0.1
    others = [d for d in planted["eval_result_details"] if d["first_letter"] != "a"]
    assert all(d["full_absorption_rate"] == 0.0 for d in others)
    assert set(planted["mean"]) >= {"mean_absorption_fraction_score", "mean_num_split_features"}
