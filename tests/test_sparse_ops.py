"""The two sparse kernels (saekit.kernels) against dense autograd: outputs and every gradient."""

import pytest
import torch

from saekit.kernels import encode_selected, sparse_decode


def random_csr(batch, d_sae, max_per_row, *, empty_rows=(), generator=None):
    """CSR code with a random number of entries per row, repeated latents across rows allowed."""
    counts = torch.randint(1, max_per_row + 1, (batch,), generator=generator)
    for r in empty_rows:
        counts[r] = 0
    offsets = torch.zeros(batch + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    # Distinct latents within a row (as every selection produces), shared latents across rows.
    indices = torch.cat([torch.randperm(d_sae, generator=generator)[: int(c)] for c in counts])
    rows = torch.repeat_interleave(torch.arange(batch), counts)
    return indices.long(), offsets, rows


def dense_code(values, indices, rows, batch, d_sae):
    dense = torch.zeros(batch, d_sae, dtype=values.dtype)
    return dense.index_put((rows, indices), values, accumulate=True)


# (batch, d_in, d_sae, max entries per row, empty rows): d_in not a power of two, batch 1, k ∤ d_sae.
SHAPES = [(7, 13, 37, 5, (2, 5)), (1, 24, 50, 7, ()), (9, 6, 11, 11, (0, 8)), (16, 33, 64, 3, ())]


@pytest.mark.parametrize("batch,d_in,d_sae,kmax,empty", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_sparse_decode_matches_dense(batch, d_in, d_sae, kmax, empty, with_bias):
    indices, offsets, rows = random_csr(batch, d_sae, kmax, empty_rows=empty)
    values = torch.randn(indices.numel(), requires_grad=True)
    W_dec = torch.randn(d_sae, d_in, requires_grad=True)
    b_dec = torch.randn(d_in, requires_grad=True) if with_bias else None
    grad_out = torch.randn(batch, d_in)

    out = sparse_decode(indices, values, offsets, W_dec, b_dec)
    out.backward(grad_out)
    got = [values.grad.clone(), W_dec.grad.clone()] + ([b_dec.grad.clone()] if with_bias else [])
    for t in [values, W_dec] + ([b_dec] if with_bias else []):
        t.grad = None

    ref = dense_code(values, indices, rows, batch, d_sae) @ W_dec
    ref = ref + b_dec if with_bias else ref
    ref.backward(grad_out)
    want = [values.grad, W_dec.grad] + ([b_dec.grad] if with_bias else [])

    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    for r in empty:
        expected = b_dec.detach() if with_bias else torch.zeros(d_in)
        torch.testing.assert_close(out[r].detach(), expected)


def test_sparse_decode_all_rows_empty_and_unused_rows_get_no_grad():
    W_dec = torch.randn(10, 5, requires_grad=True)
    offsets = torch.zeros(4, dtype=torch.long)
    out = sparse_decode(torch.zeros(0, dtype=torch.long), torch.zeros(0), offsets, W_dec, None)
    assert out.shape == (3, 5) and torch.count_nonzero(out) == 0

    indices = torch.tensor([3, 7, 3])
    values = torch.tensor([1.0, 2.0, -1.0])
    out = sparse_decode(indices, values, torch.tensor([0, 2, 3]), W_dec, None)
    out.sum().backward()
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[[3, 7]] = False
    assert torch.count_nonzero(W_dec.grad[untouched]) == 0
    assert torch.count_nonzero(W_dec.grad[[3, 7]]) > 0


def test_sparse_decode_fp16_inputs_accumulate_in_fp32():
    batch, d_in, d_sae = 12, 40, 300
    indices, offsets, rows = random_csr(batch, d_sae, 64)
    values = torch.rand(indices.numel()).half()
    W_dec = (torch.randn(d_sae, d_in) * 0.5).half()
    b_dec = torch.randn(d_in).half()
    out = sparse_decode(indices, values, offsets, W_dec, b_dec)
    assert out.dtype == torch.float32
    ref = dense_code(values.double(), indices, rows, batch, d_sae) @ W_dec.double() + b_dec.double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-3)

    values.requires_grad_(True)
    W_dec.requires_grad_(True)
    sparse_decode(indices, values, offsets, W_dec, None).sum().backward()
    assert values.grad.dtype == torch.float16 and W_dec.grad.dtype == torch.float16
    want = W_dec.detach().double()[indices].sum(dim=1)  # ∂/∂v_e of Σ x̂ = Σ_d W_dec[idx_e, d]
    torch.testing.assert_close(values.grad.double(), want, rtol=1e-3, atol=1e-2)


def _encoder_case(batch, d_in, d_sae, kmax, empty, dtype=torch.float32):
    indices, offsets, rows = random_csr(batch, d_sae, kmax, empty_rows=empty)
    x = torch.randn(batch, d_in, dtype=dtype)
    W_enc = torch.randn(d_in, d_sae, dtype=dtype) / d_in**0.5
    b_enc = torch.randn(d_sae, dtype=dtype)
    b_dec = torch.randn(d_in, dtype=dtype)
    return x, W_enc, b_enc, b_dec, rows, indices


@pytest.mark.parametrize("batch,d_in,d_sae,kmax,empty", SHAPES)
@pytest.mark.parametrize("grad_x", [False, True])
def test_encode_selected_matches_dense_autograd(batch, d_in, d_sae, kmax, empty, grad_x):
    x, W_enc, b_enc, b_dec, rows, indices = _encoder_case(batch, d_in, d_sae, kmax, empty)
    leaves = [x, W_enc, b_enc, b_dec] if grad_x else [W_enc, b_enc, b_dec]
    for t in leaves:
        t.requires_grad_(True)
    upstream = torch.randn(indices.numel())

    h_dense = (x - b_dec) @ W_enc + b_enc
    ref = h_dense[rows, indices]
    ref.backward(upstream)
    want = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None

    with torch.no_grad():
        pre_acts = ((x - b_dec) @ W_enc + b_enc)[rows, indices]
    out = encode_selected(x, W_enc, b_enc, b_dec, rows, indices, pre_acts)
    out.backward(upstream)

    torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    for t, w in zip(leaves, want, strict=True):
        torch.testing.assert_close(t.grad, w, rtol=1e-5, atol=1e-5)
    if not grad_x:
        assert x.grad is None
    # Never-selected latents get exactly zero encoder gradient.
    unused = torch.ones(d_sae, dtype=torch.bool)
    unused[indices] = False
    assert torch.count_nonzero(W_enc.grad[:, unused]) == 0 and torch.count_nonzero(b_enc.grad[unused]) == 0


def test_encode_selected_fp16_pre_acts_give_fp32_values_and_close_grads():
    x, W_enc, b_enc, b_dec, rows, indices = _encoder_case(10, 30, 90, 8, (3,))
    for t in (W_enc, b_enc, b_dec):
        t.requires_grad_(True)
    upstream = torch.randn(indices.numel())
    ((x - b_dec) @ W_enc + b_enc)[rows, indices].backward(upstream)
    want = [t.grad.clone() for t in (W_enc, b_enc, b_dec)]
    for t in (W_enc, b_enc, b_dec):
        t.grad = None

    x16 = x.half()
    with torch.no_grad():
        pre16 = ((x16 - b_dec.half()) @ W_enc.half() + b_enc.half())[rows, indices]
    out = encode_selected(x16, W_enc, b_enc, b_dec, rows, indices, pre16)
    assert out.dtype == torch.float32
    out.backward(upstream)
    for t, w in zip((W_enc, b_enc, b_dec), want, strict=True):
        torch.testing.assert_close(t.grad, w, rtol=1e-3, atol=2e-3)


def test_encode_selected_gradcheck_fp64():
    x, W_enc, b_enc, b_dec, rows, indices = _encoder_case(4, 5, 9, 4, (1,), dtype=torch.float64)
    # pre_acts must equal h at the selection for the identity-forward to be the true function, so
    # gradcheck a wrapper that recomputes them from the (perturbed) inputs under no_grad.

    def fn(x, W_enc, b_enc, b_dec):
        with torch.no_grad():
            pre = ((x - b_dec) @ W_enc + b_enc)[rows, indices]
        return encode_selected(x, W_enc, b_enc, b_dec, rows, indices, pre)

    inputs = tuple(t.requires_grad_(True) for t in (x, W_enc, b_enc, b_dec))
    assert torch.autograd.gradcheck(fn, inputs)


def test_sparse_decode_gradcheck_fp64_with_empty_rows():
    # saekit's own decode backward (sampled dots for the values, latent bags for W_dec) against finite
    # differences, on a code with empty rows and a latent used by several rows
    indices, offsets, _ = random_csr(6, 9, 4, empty_rows=(0, 4), generator=torch.Generator().manual_seed(3))
    values = torch.rand(indices.numel(), dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(5, dtype=torch.float64, requires_grad=True)
    fn = lambda v, w, b: sparse_decode(indices, v, offsets, w, b)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (values, W_dec, b_dec))
