"""Triton sparse kernels (run in the interpreter, TRITON_INTERPRET=1 from conftest) against dense autograd
references written here: outputs and every gradient, on tiny awkward shapes, fp32 / fp16 / bf16.

`make gpu-check` runs this module on a GPU without the interpreter: SAEKIT_TEST_DEVICE=cuda makes every
tensor the tests create a CUDA tensor (torch's default device)."""

from __future__ import annotations

import os

import pytest
import torch

from saekit.kernels import triton_segment
from saekit.kernels.triton_decode import triton_sparse_decode
from saekit.kernels.triton_encoder import triton_encode_selected

DEVICE = os.environ.get("SAEKIT_TEST_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _default_device():
    torch.set_default_device(DEVICE)
    yield
    torch.set_default_device("cpu")


# rtol per dtype: fp32 only differs by summation order; fp16/bf16 add one rounding of each output.
RTOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Relative check with an absolute floor scaled to the tensor, so near-zero entries don't dominate."""
    expected = expected.detach().float()
    scale = expected.abs().max().clamp_min(1.0)
    torch.testing.assert_close(actual.detach().float(), expected, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


def make_csr(counts: list[int], d_sae: int, *, hot_latent: int | None = None):
    """Random CSR code with the given entries per row; `hot_latent` is put in every non-empty row."""
    rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    indices = torch.randint(0, d_sae, (rows.numel(),))
    offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(counts), 0)
    if hot_latent is not None:
        indices[offsets[:-1][torch.tensor(counts) > 0]] = hot_latent
    values = torch.randn(rows.numel())
    return rows, indices, values, offsets


def dense_decode(rows, indices, values, W_dec, b_dec, batch):
    """The definition: scatter the code into [B, d_sae] (duplicates add up) and multiply."""
    z = torch.zeros(batch, W_dec.shape[0], dtype=values.dtype).index_put(
        (rows, indices), values, accumulate=True
    )
    out = z @ W_dec
    return out if b_dec is None else out + b_dec


def run_decode_case(counts, d_sae, d_in, dtype, *, bias=True, hot_latent=None, zero_some=False):
    rows, indices, values, offsets = make_csr(counts, d_sae, hot_latent=hot_latent)
    if zero_some and values.numel():
        values[::3] = 0.0  # ReLU'd entries: no output contribution, but ∂values is still a real dot
    W_dec = torch.randn(d_sae, d_in).to(dtype)
    b_dec = torch.randn(d_in).to(dtype) if bias else None
    values = values.to(dtype)
    probe = torch.randn(len(counts), d_in).to(dtype)

    leaves = [t.clone().requires_grad_() for t in (values, W_dec) + ((b_dec,) if bias else ())]
    out = triton_sparse_decode(indices, leaves[0], offsets, leaves[1], leaves[2] if bias else None)
    assert out.dtype == dtype and out.shape == (len(counts), d_in)
    (out.float() * probe.float()).sum().backward()

    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    ref = dense_decode(
        rows, indices, ref_leaves[0], ref_leaves[1], ref_leaves[2] if bias else None, len(counts)
    )
    (ref * probe.float()).sum().backward()

    assert_close(out, ref, dtype)
    for got, want in zip(leaves, ref_leaves, strict=True):
        assert got.grad.dtype == dtype
        assert_close(got.grad, want.grad, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_fixed_k_matches_dense(dtype):
    # k=3 does not divide d_sae=100; d_in=72 is not a power of two.
    run_decode_case([3] * 5, d_sae=100, d_in=72, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_variable_rows_with_empty_rows(dtype):
    run_decode_case([0, 3, 1, 0, 7, 2, 0, 5], d_sae=61, d_in=200, dtype=dtype, zero_some=True)


def test_decode_batch_one_no_bias():
    run_decode_case([4], d_sae=33, d_in=45, dtype=torch.float32, bias=False)


def test_decode_same_latent_in_many_rows_and_repeated_in_a_row():
    run_decode_case([2, 5, 1, 8, 3, 6], d_sae=1000, d_in=24, dtype=torch.float32, hot_latent=7)
    # A latent listed twice in one row counts twice (the CSR is a sum, not a set).
    indices, offsets = torch.tensor([3, 3, 1]), torch.tensor([0, 3])
    values, W_dec = torch.tensor([1.0, 2.0, 0.5]), torch.randn(5, 7)
    out = triton_sparse_decode(indices, values, offsets, W_dec)
    torch.testing.assert_close(out[0], 3.0 * W_dec[3] + 0.5 * W_dec[1], rtol=1e-6, atol=1e-6)


def test_decode_all_rows_empty_gives_bias_and_zero_grads():
    indices, values = torch.zeros(0, dtype=torch.long), torch.zeros(0, requires_grad=True)
    offsets = torch.zeros(4, dtype=torch.long)
    W_dec, b_dec = torch.randn(9, 13, requires_grad=True), torch.randn(13, requires_grad=True)
    out = triton_sparse_decode(indices, values, offsets, W_dec, b_dec)
    torch.testing.assert_close(out, b_dec.detach().expand(3, 13))
    out.sum().backward()
    assert torch.count_nonzero(W_dec.grad) == 0 and values.grad.shape == (0,)
    torch.testing.assert_close(b_dec.grad, torch.full((13,), 3.0))


def test_decode_many_blocks_strided_weight_and_broadcast_grad(monkeypatch):
    # Shrink the tiles so rows span several entry blocks and d_in several column blocks (with a ragged last
    # block), read W_dec through a transposed view, and backprop a stride-0 gradient from .sum().
    monkeypatch.setattr(triton_segment, "SEGMENT_BLOCK_E", 4)
    monkeypatch.setattr(triton_segment, "SEGMENT_MAX_BLOCK_D", 32)
    monkeypatch.setattr(triton_segment, "DOT_MAX_BLOCK_D", 16)
    rows, indices, values, offsets = make_csr([9, 0, 5, 12], d_sae=20)
    indices[::2] = 2  # latent 2 gets 13 entries: several blocks in the latent-grouped ∂W_dec pass too
    W_t = torch.randn(70, 20)
    W_dec = W_t.t().requires_grad_()  # [20, 70], column-major
    values.requires_grad_()
    out = triton_sparse_decode(indices, values, offsets, W_dec)
    out.sum().backward()
    ref_vals, ref_W = values.detach().clone().requires_grad_(), W_t.t().clone().requires_grad_()
    ref = dense_decode(rows, indices, ref_vals, ref_W, None, 4)
    ref.sum().backward()
    assert_close(out, ref, torch.float32)
    assert_close(W_dec.grad, ref_W.grad, torch.float32)
    assert_close(values.grad, ref_vals.grad, torch.float32)


def dense_encoder_grads(x, W_enc, b_enc, b_dec, rows, indices, probe):
    """Reference: full dense pre-activations, gather the selected entries, backprop a probe through them."""
    leaves = [t.detach().float().requires_grad_() for t in (x, W_enc, b_enc, b_dec)]
    h = (leaves[0] - leaves[3]) @ leaves[1] + leaves[2]
    (h[rows, indices] * probe.float()).sum().backward()
    return [t.grad for t in leaves]


def run_encoder_case(counts, d_sae, d_in, dtype, *, x_grad=True, shuffle=False, hot_latent=None):
    rows, indices, _, _ = make_csr(counts, d_sae, hot_latent=hot_latent)
    if shuffle:  # variable-k selections need not arrive grouped by row
        perm = torch.randperm(rows.numel())
        rows, indices = rows[perm], indices[perm]
    x = (torch.randn(len(counts), d_in) + 3.0).to(dtype)  # offset: makes the b_dec shift matter
    W_enc, b_enc, b_dec = (
        torch.randn(d_in, d_sae).to(dtype),
        torch.randn(d_sae).to(dtype),
        torch.randn(d_in).to(dtype),
    )
    with torch.no_grad():
        pre_acts = ((x.float() - b_dec.float()) @ W_enc.float() + b_enc.float())[rows, indices].to(dtype)
    probe = torch.randn(rows.numel()).to(dtype)

    leaves = [x.clone().requires_grad_(x_grad)] + [t.clone().requires_grad_() for t in (W_enc, b_enc, b_dec)]
    sel = triton_encode_selected(*leaves, rows, indices, pre_acts)
    torch.testing.assert_close(sel, pre_acts, rtol=0, atol=0)
    (sel.float() * probe.float()).sum().backward()

    expected = dense_encoder_grads(x, W_enc, b_enc, b_dec, rows, indices, probe)
    if not x_grad:
        assert leaves[0].grad is None
    for got, want in zip(leaves, expected, strict=True):
        if got.requires_grad:
            assert got.grad.dtype == dtype and got.grad.shape == got.shape
            assert_close(got.grad, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_encode_selected_fixed_k_matches_dense(dtype):
    run_encoder_case([3] * 4, d_sae=50, d_in=36, dtype=dtype)


def test_encode_selected_variable_unordered_rows():
    run_encoder_case([0, 6, 1, 0, 4, 2], d_sae=77, d_in=130, dtype=torch.float32, shuffle=True, hot_latent=11)


def test_encode_selected_without_x_grad_and_batch_one():
    run_encoder_case([5], d_sae=1000, d_in=20, dtype=torch.float32, x_grad=False)


def test_encode_selected_then_decode_is_a_topk_sae_step():
    """The two ops composed as in training give the same gradients as the dense TopK SAE."""
    B, d_in, d_sae, k = 6, 40, 90, 4
    x = torch.randn(B, d_in)
    params = [
        torch.randn(d_in, d_sae) * 0.2,
        torch.randn(d_sae) * 0.1,
        torch.randn(d_sae, d_in) * 0.2,
        torch.randn(d_in),
    ]
    ours = [p.clone().requires_grad_() for p in params]
    ref = [p.clone().requires_grad_() for p in params]

    W_enc, b_enc, W_dec, b_dec = ours
    with torch.no_grad():
        vals, idx = ((x - b_dec) @ W_enc + b_enc).topk(k, dim=1)
    rows = torch.arange(B).repeat_interleave(k)
    pre = triton_encode_selected(x, W_enc, b_enc, b_dec, rows, idx.flatten(), vals.flatten())
    offsets = torch.arange(0, B * k + 1, k)
    x_hat = triton_sparse_decode(idx.flatten(), torch.relu(pre), offsets, W_dec, b_dec)
    (x_hat - x).pow(2).sum().backward()

    W_enc, b_enc, W_dec, b_dec = ref
    h = (x - b_dec) @ W_enc + b_enc
    z = torch.zeros_like(h).scatter(1, idx, torch.relu(h.gather(1, idx)))
    (z @ W_dec + b_dec - x).pow(2).sum().backward()

    for got, want in zip(ours, ref, strict=True):
        assert_close(got.grad, want.grad, torch.float32)


def test_gradcheck_fp64_both_ops():
    """Finite differences in fp64 (the kernels accumulate in fp64 when given fp64) check every formula."""
    rows, indices, _, offsets = make_csr([2, 0, 3], d_sae=6)
    vals = torch.randn(5, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(5, dtype=torch.float64, requires_grad=True)
    decode = lambda v, W, b: triton_sparse_decode(indices, v, offsets, W, b)
    assert torch.autograd.gradcheck(decode, (vals, W_dec, b_dec))

    def encode(x, W_enc, b_enc, b_dec):
        with torch.no_grad():  # as in training: the caller's dense GEMM carries no graph
            pre = ((x - b_dec) @ W_enc + b_enc)[rows, indices]
        return triton_encode_selected(x, W_enc, b_enc, b_dec, rows, indices, pre)

    leaves = [
        torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in ((3, 5), (5, 6), (6,), (5,))
    ]
    assert torch.autograd.gradcheck(encode, tuple(leaves))


def test_matches_torch_twin_fp32():
    """Same op, same numbers as the CPU backend (kernels/torch_ops.py), outputs and all gradients."""
    from saekit.kernels.torch_ops import encode_selected_torch, sparse_decode_torch

    rows, indices, values, offsets = make_csr([3, 0, 5, 1], d_sae=29, hot_latent=4)
    x, W_enc, b_enc = torch.randn(4, 19), torch.randn(19, 29), torch.randn(29)
    W_dec, b_dec = torch.randn(29, 19), torch.randn(19)
    with torch.no_grad():
        pre = ((x - b_dec) @ W_enc + b_enc)[rows, indices]

    def step(encode, decode):
        leaves = [t.clone().requires_grad_() for t in (x, W_enc, b_enc, W_dec, b_dec)]
        sel = encode(leaves[0], leaves[1], leaves[2], leaves[4], rows, indices, pre)
        out = decode(indices, torch.relu(sel) + values, offsets, leaves[3], leaves[4])
        out.pow(2).sum().backward()
        return [out] + [t.grad for t in leaves]

    ours = step(triton_encode_selected, triton_sparse_decode)
    twin = step(encode_selected_torch, sparse_decode_torch)
    for got, want in zip(ours, twin, strict=True):
        assert_close(got, want, torch.float32)


@pytest.mark.skipif(DEVICE != "cpu", reason="value checks run off-GPU only (see QUARANTINE.md)")
def test_launchers_reject_bad_inputs_with_fixes(monkeypatch):
    W_dec, offsets = torch.randn(10, 8), torch.tensor([0, 2, 3])
    indices, values = torch.tensor([1, 2, 3]), torch.randn(3)
    with pytest.raises(ValueError, match="int64"):
        triton_sparse_decode(indices.int(), values, offsets, W_dec)
    with pytest.raises(ValueError, match="end at nnz"):
        triton_sparse_decode(indices, values, torch.tensor([0, 2, 2]), W_dec)
    with pytest.raises(ValueError, match="d_sae=10"):
        triton_sparse_decode(torch.tensor([1, 2, 10]), values, offsets, W_dec)
    with pytest.raises(ValueError, match="b_dec"):
        triton_sparse_decode(indices, values, offsets, W_dec, torch.randn(9))
    with pytest.raises(ValueError, match="equally long"):
        triton_sparse_decode(indices, values[:2], offsets, W_dec)
    x, W_enc, b = torch.randn(2, 8), torch.randn(8, 10), torch.randn(10)
    with pytest.raises(ValueError, match="rows must lie"):
        triton_encode_selected(x, W_enc, b, torch.randn(8), torch.tensor([0, 2, 1]), indices, values)
    with pytest.raises(ValueError, match="W_enc"):
        triton_encode_selected(x, W_enc.t(), b, torch.randn(8), torch.tensor([0, 1, 1]), indices, values)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="SAEKIT_KERNELS=torch"):
        triton_sparse_decode(indices, values, offsets, W_dec)
