"""The Triton encoder+top-k kernel (interpreted on CPU; on a GPU under `make gpu-check`) selects what the
dense GEMM + torch.topk selects, across ragged tiles, latent splits and padded K."""

from __future__ import annotations

import os

import pytest
import torch

from saekit.kernels.fused_topk import fused_encode_topk

DEVICE = os.environ.get("SAEKIT_TEST_DEVICE", "cpu")
TINY = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}  # tl.dot's minimum: keeps the interpreter fast


@pytest.fixture(autouse=True)
def _default_device():
    torch.set_default_device(DEVICE)
    yield
    torch.set_default_device("cpu")


def case(batch, d_in, d_sae, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d_in, generator=gen)
    W_T = torch.randn(d_sae, d_in, generator=gen)
    b = torch.randn(d_sae, generator=gen)
    return x.to(DEVICE), W_T.to(DEVICE), b.to(DEVICE)


def check_against_dense(x, W_T, b, k, **kw):
    values, indices = fused_encode_topk(x, W_T, b, k, **kw)
    h = torch.addmm(b, x, W_T.t())
    want_v, want_i = torch.topk(h, k, dim=1)
    assert values.shape == indices.shape == (x.shape[0], k) and indices.dtype == torch.long
    got_v, order = values.sort(dim=1, descending=True)
    torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-4)
    assert torch.equal(indices.gather(1, order), want_i)  # randn data: no ties among the top
    torch.testing.assert_close(h.gather(1, indices), values, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "batch,d_in,d_sae,k,splits",
    [
        (5, 20, 70, 3, 1),  # every dimension ragged against the 16-wide tiles, one split
        (19, 16, 96, 8, 3),  # rows over two row blocks, three latent splits
        (4, 24, 64, 5, 2),  # K not a power of two (padded register tile)
        (3, 16, 40, 16, 4),  # splits narrower than K: their empty slots must lose the final top-k
    ],
)
def test_fused_kernel_selects_the_dense_topk(batch, d_in, d_sae, k, splits):
    check_against_dense(*case(batch, d_in, d_sae), k, blocks=TINY, splits=splits)


def test_many_winners_in_one_tile_and_a_row_of_ties():
    x, W_T, b = case(6, 16, 64)
    b[16:32] += 100.0  # all of the top-8 of every row sit in the second tile
    check_against_dense(x, W_T, b, 8, blocks=TINY, splits=2)
    W_T[:] = 0.0
    b[:] = 1.0  # everything ties: any k distinct latents with value 1 are right
    values, indices = fused_encode_topk(x, W_T, b, 8, blocks=TINY, splits=2)
    assert torch.equal(values, torch.ones_like(values))
    assert all(row.unique().numel() == 8 for row in indices)


def test_rejects_bad_shapes_with_the_expected_layout():
    x, W_T, b = case(2, 16, 32)
    with pytest.raises(ValueError, match=r"W_enc_T \[d_sae, d_in\]"):
        fused_encode_topk(x, W_T.t(), b, 4)
    with pytest.raises(ValueError, match="k must lie in"):
        fused_encode_topk(x, W_T, b, 33)


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 tl.dot is wrong under the interpreter (see QUARANTINE.md)")
def test_bf16_gemm_keeps_fp32_accumulation():
    x, W_T, b = case(64, 256, 4096)
    values, indices = fused_encode_topk(x, W_T, b, 32, bf16=True)
    h = torch.addmm(b, x.bfloat16().float(), W_T.bfloat16().float().t())
    torch.testing.assert_close(values, h.gather(1, indices), rtol=1e-3, atol=1e-2)
    overlap = torch.tensor(
        [len(set(a.tolist()) & set(c.tolist())) for a, c in zip(indices, h.topk(32).indices, strict=True)]
    )
    assert overlap.float().mean() > 31  # bf16 rounding may swap a near-tie at the boundary, rarely
