"""row_topk: the chunk-pruned per-row top-k must return exactly torch.topk's values, with valid indices."""

import copy

import pytest
import torch

from saekit.config import SaeConfig
from saekit.sae import Sae
from saekit.sae.row_topk import row_topk


def check_against_torch(h, k, *, sorted=False):
    values, indices = row_topk(h, k, sorted=sorted)
    want = torch.topk(h, k, dim=1).values
    assert values.shape == indices.shape == (h.shape[0], k)
    torch.testing.assert_close(values.sort(dim=1, descending=True).values, want, rtol=0, atol=0)
    torch.testing.assert_close(h.gather(1, indices), values, rtol=0, atol=0)
    assert all(row.unique().numel() == k for row in indices)  # no column picked twice
    if sorted:
        assert (values[:, :-1] >= values[:, 1:]).all()


@pytest.mark.parametrize("width,k", [(1024, 16), (2048, 32), (4096, 8), (1024, 1)])
def test_pruned_path_equals_torch_topk(width, k):
    check_against_torch(torch.randn(37, width), k)
    check_against_torch(torch.randn(5, width), k, sorted=True)


def test_many_winners_in_one_chunk_and_heavy_ties():
    h = torch.randn(6, 1024)
    # Row 0: the 16 largest values all sit in one chunk (columns j ≡ 3 mod 64), so one chunk holds them all.
    h[0, 3::64] = torch.arange(100.0, 116.0)
    # Row 1: integer values with massive ties; row 2: constant.
    h[1] = torch.randint(0, 4, (1024,)).float()
    h[2] = 1.5
    check_against_torch(h, 16)
    assert set(row_topk(h, 16)[1][0].tolist()) == set(range(3, 1024, 64))


def test_falls_back_when_pruning_cannot_help():
    # width not a multiple of 16, and k·16·4 > width: plain torch.topk, same contract
    check_against_torch(torch.randn(4, 1000), 8)
    check_against_torch(torch.randn(4, 1024), 32)


def test_training_reuses_one_pre_activation_buffer_and_eval_releases_it():
    sae = Sae(12, SaeConfig.make("topk", k=3, d_sae=40)).train()
    x = torch.randn(5, 12)
    first = sae.dense_pre_acts(x, reuse_buffer=True)
    expected = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(first, expected)
    second = sae.dense_pre_acts(2 * x, reuse_buffer=True)
    assert second.data_ptr() == first.data_ptr()  # same storage, no fresh [B, d_sae] allocation
    assert sae.dense_pre_acts(x).data_ptr() != first.data_ptr()  # default: a tensor of its own
    assert sae.dense_pre_acts(x[:3], reuse_buffer=True).shape == (3, 40)  # new shape: reallocated
    clone = copy.deepcopy(sae)
    assert clone._scratch.tensor is None  # copies never drag the scratch along
    sae.eval()
    assert sae._scratch.tensor is None
    # keep_pre_acts hands out h: it must not be the buffer the next training step overwrites
    sae.train()
    kept = sae(x, keep_pre_acts=True).pre_acts
    before = kept.clone()
    sae(3 * x)
    torch.testing.assert_close(kept, before, rtol=0, atol=0)
