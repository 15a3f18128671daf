"""Streaming reconstruction/sparsity metrics (algorithms.md §10, §12 "Metrics") on synthetic tensors."""

import json
import math

import pytest
import torch

from saekit.errors import DataError
from saekit.eval.metrics import ReconstructionStats, SparsityStats, log_density_histogram
from saekit.types import SparseCode


def _feed(stats: ReconstructionStats, x, x_hat, chunk: int) -> dict:
    for lo in range(0, x.shape[0], chunk):
        stats.update(x[lo : lo + chunk], x_hat[lo : lo + chunk])
    return stats.compute()


def _code_from_dense(z: torch.Tensor) -> SparseCode:
    """CSR of every nonzero entry of a dense [B, n] code (stored zeros are not included)."""
    rows, cols = z.nonzero(as_tuple=True)
    return SparseCode.from_rows(rows, cols, z[rows, cols], z.shape[0], z.shape[1])


def test_fvu_is_one_for_the_mean_and_zero_for_identity():
    x = torch.randn(37, 5) * 3 + torch.tensor([10.0, -4.0, 0.0, 2.0, 7.0])  # large offset: tests exact x̄
    mean = x.double().mean(0).float().expand_as(x)
    at_mean = _feed(ReconstructionStats(), x, mean, chunk=8)  # batches of uneven size
    assert at_mean["fvu"] == pytest.approx(1.0, abs=1e-6)
    assert at_mean["explained_variance"] == pytest.approx(0.0, abs=1e-6)
    identity = _feed(ReconstructionStats(), x, x.clone(), chunk=10)
    assert identity["fvu"] == 0.0
    assert identity["mse_per_element"] == 0.0
    assert identity["cosine_similarity"] == pytest.approx(1.0, abs=1e-12)
    assert identity["l2_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert identity["relative_reconstruction_bias"] == pytest.approx(1.0, abs=1e-12)


def test_streaming_matches_one_shot_formulas():
    x, x_hat = torch.randn(50, 7), torch.randn(50, 7)
    got = _feed(ReconstructionStats(), x, x_hat, chunk=13)
    x64, h64 = x.double(), x_hat.double()
    err = ((x64 - h64) ** 2).sum()
    assert got["fvu"] == pytest.approx(float(err / ((x64 - x64.mean(0)) ** 2).sum()), rel=1e-10)
    assert got["mse_per_element"] == pytest.approx(float(err / x.numel()), rel=1e-10)
    cos = torch.nn.functional.cosine_similarity(x64, h64, dim=1).mean()
    assert got["cosine_similarity"] == pytest.approx(float(cos), rel=1e-10)
    assert got["l2_ratio"] == pytest.approx(float((h64.norm(dim=1) / x64.norm(dim=1)).mean()), rel=1e-10)
    bias = (h64 * h64).sum(1).mean() / (x64 * h64).sum(1).mean()
    assert got["relative_reconstruction_bias"] == pytest.approx(float(bias), rel=1e-10)
    assert got["rows"] == 50


def test_shrinkage_shows_in_bias_and_l2_ratio():
    x = torch.randn(20, 4)
    got = _feed(ReconstructionStats(), x, 0.5 * x, chunk=20)
    assert got["relative_reconstruction_bias"] == pytest.approx(0.5, rel=1e-6)
    assert got["l2_ratio"] == pytest.approx(0.5, rel=1e-6)
    assert got["cosine_similarity"] == pytest.approx(1.0, rel=1e-6)


def test_dead_and_dense_fractions_match_hand_count():
    # 10 tokens, 6 latents. freq: latent0 1.0, latent1 0.2, latent2 0.1 (== tau: not dense, strict >),
    # latent3 and latent4 never, latent5 only ever stored with value 0 (does not fire) -> dead.
    z = torch.zeros(10, 6)
    z[:, 0] = 1.0
    z[:2, 1] = 2.0
    z[5, 2] = 0.5
    code = _code_from_dense(z)
    zero_rows = torch.arange(10)
    with_zeros = SparseCode.from_rows(
        torch.cat([code.row_ids(), zero_rows]),
        torch.cat([code.indices, torch.full((10,), 5)]),
        torch.cat([code.values, torch.zeros(10)]),
        batch=10,
        d_sae=6,
    )
    stats = SparsityStats(d_sae=6, dense_threshold=0.1)
    stats.update(
        SparseCode(with_zeros.values[:0], with_zeros.indices[:0], torch.zeros(1, dtype=torch.long), 6)
    )
    stats.update(with_zeros)
    got = stats.compute()
    assert got["dead_fraction"] == pytest.approx(3 / 6)
    assert got["dense_fraction"] == pytest.approx(2 / 6)
    assert got["alive_latents"] == 3
    assert stats.density().tolist() == pytest.approx([1.0, 0.2, 0.1, 0.0, 0.0, 0.0])
    # per-token L0: rows 0,1 -> 2; row 5 -> 2; the other 7 rows -> 1 (zeros stored for latent 5 not counted)
    assert got["l0_histogram"] == [0, 7, 3]
    assert got["l0_mean"] == pytest.approx((7 * 1 + 3 * 2) / 10)


def test_histograms_sum_to_latents_and_tokens_over_batches():
    d_sae, stats = 64, ReconstructionStats(d_sae=64)
    total = 0
    for batch in (5, 1, 17):
        x = torch.randn(batch, 8)
        z = torch.relu(torch.randn(batch, d_sae) - 1.0)  # variable L0 per row, some rows maybe empty
        stats.update(x, x * 0.9, _code_from_dense(z))
        total += batch
    got = stats.compute()
    assert sum(got["l0_histogram"]) == total
    hist = got["log10_density_histogram"]
    assert sum(hist["counts"]) == d_sae
    assert len(hist["counts"]) == 100 and len(hist["edges"]) == 101
    assert hist["edges"][0] == -10.0 and hist["edges"][-1] == 0.0
    json.dumps(got, allow_nan=False)  # plain JSON, no NaN/inf, no tensors


def test_density_histogram_edges_place_dead_and_always_on_latents():
    freq = torch.tensor([0.0, 1.0, 1e-3, 0.95, 0.5])
    counts, _ = log_density_histogram(freq)
    assert counts[0] == 1  # dead: log10(1e-10) = -10, left edge
    assert counts[99] == 2  # freq 1 (log slightly > 0, clamped) and 0.95 (log10 = -0.022)
    assert counts[96] == 1  # log10(0.5) = -0.301 -> floor(96.99) = 96
    assert counts[70] == 1  # log10(1e-3) = -3 -> bin floor((−3 + 10) / 0.1) = 70
    assert sum(counts) == 5


def test_bad_inputs_raise_with_clear_errors():
    stats = ReconstructionStats()
    with pytest.raises(DataError, match="batch, d_in"):
        stats.update(torch.zeros(3, 4), torch.zeros(3, 5))
    stats.update(torch.ones(3, 4), torch.ones(3, 4))
    with pytest.raises(DataError, match="width"):
        stats.update(torch.zeros(2, 6), torch.zeros(2, 6))
    with pytest.raises(DataError, match="non-finite"):
        stats.update(torch.full((1, 4), math.nan), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="d_sae"):
        stats.update(torch.ones(1, 4), torch.ones(1, 4), _code_from_dense(torch.ones(1, 3)))


def test_constant_data_gives_null_fvu_not_nan():
    x = torch.ones(6, 3)
    got = _feed(ReconstructionStats(), x, x * 0.0, chunk=6)
    assert got["fvu"] is None and got["explained_variance"] is None
    json.dumps(got, allow_nan=False)
