"""Encoder backward from selected entries only, on Triton.

The encoder forward h = (x − b_dec) W_enc + b_enc stays a dense GEMM (done by the caller, under no_grad),
and only the selected entries pre_acts[e] = h[rows[e], indices[e]] reach the loss. This op returns those
entries unchanged and, in backward, routes their gradient g[nnz] to the parameters without any dense
[B, d_sae] tensor:
- ∂W_enc[:, i] = Σ_{e: idx_e = i} g_e · (x − b_dec)[row_e]   (entries grouped by latent, one program each)
- ∂b_enc       = bincount(indices, g, d_sae)
- ∂b_dec       = −W_enc · ∂b_enc
- ∂x[b]        = Σ_{e: row_e = b} g_e · W_enc[:, idx_e]       (only when x requires grad)
`pre_acts` itself gets no gradient: it is a value, the parameters above are where the gradient goes.

    with torch.no_grad():
        h = (x - b_dec) @ W_enc + b_enc; vals, idx = h.topk(k)
    rows = torch.arange(B).repeat_interleave(k)
    sel = triton_encode_selected(x, W_enc, b_enc, b_dec, rows, idx.flatten(), vals.flatten())
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable

from .triton_segment import check_launchable, csr_by_key, segment_gather_sum

_OP = "triton_encode_selected"


def _check_encode_args(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, rows: Tensor, indices: Tensor, pre_acts: Tensor
) -> None:
    """Shape/dtype/device checks with the fix in each message; value checks only off-GPU (no host sync)."""
    check_launchable(x, W_enc, b_enc, b_dec, rows, indices, pre_acts, op=_OP)
    if rows.dtype != torch.long or indices.dtype != torch.long:
        raise ValueError(
            f"{_OP}: rows and indices must be int64, got {rows.dtype} and {indices.dtype}; call .long()"
        )
    if not all(t.is_floating_point() for t in (x, W_enc, b_enc, b_dec, pre_acts)):
        raise ValueError(f"{_OP}: x, W_enc, b_enc, b_dec and pre_acts must be floating point")
    if x.ndim != 2 or W_enc.ndim != 2 or x.shape[1] != W_enc.shape[0]:
        raise ValueError(
            f"{_OP}: expected x [B, d_in] and W_enc [d_in, d_sae], "
            f"got {tuple(x.shape)} and {tuple(W_enc.shape)}"
        )
    d_in, d_sae = W_enc.shape
    if b_enc.shape != (d_sae,) or b_dec.shape != (d_in,):
        raise ValueError(
            f"{_OP}: b_enc must be [d_sae]={d_sae} and b_dec [d_in]={d_in}, "
            f"got {tuple(b_enc.shape)} and {tuple(b_dec.shape)}"
        )
    if rows.ndim != 1 or indices.shape != rows.shape or pre_acts.shape != rows.shape:
        raise ValueError(
            f"{_OP}: rows, indices and pre_acts must be 1-D and equally long, got "
            f"{tuple(rows.shape)}, {tuple(indices.shape)}, {tuple(pre_acts.shape)}; flatten [B, k] selections"
        )
    if not rows.is_cuda and rows.numel():
        if rows.min().item() < 0 or rows.max().item() >= x.shape[0]:
            raise ValueError(f"{_OP}: rows must lie in [0, B={x.shape[0]})")
        if indices.min().item() < 0 or indices.max().item() >= d_sae:
            raise ValueError(f"{_OP}: indices must lie in [0, d_sae={d_sae})")


def _grad_W_enc(
    x: Tensor, b_dec: Tensor, rows: Tensor, indices: Tensor, grad: Tensor, W_enc: Tensor
) -> Float[Tensor, "d_in d_sae"]:
    """∂W_enc as the transpose of a [d_sae, d_in] latent-major sum; the transpose is a free view."""
    d_sae = W_enc.shape[1]
    lat_offsets, lat_rows, lat_grad = csr_by_key(indices, rows, grad, n_segments=d_sae)
    grad_T = segment_gather_sum(lat_offsets, lat_rows, lat_grad, x, shift=b_dec, out_dtype=W_enc.dtype)
    return grad_T.t()


def _grad_x(indices: Tensor, rows: Tensor, grad: Tensor, W_enc: Tensor, x: Tensor) -> Float[Tensor, "B d_in"]:
    """∂x[b] = Σ g_e W_enc[:, idx_e]: read W_enc as its [d_sae, d_in] transpose view (strides, no copy)."""
    row_offsets, row_latents, row_grad = csr_by_key(rows, indices, grad, n_segments=x.shape[0])
    return segment_gather_sum(row_offsets, row_latents, row_grad, W_enc.t(), out_dtype=x.dtype)


class _EncodeSelected(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, rows, indices, pre_acts):
        ctx.save_for_backward(x, W_enc, b_dec, rows, indices)
        ctx.dtypes = (b_enc.dtype, b_dec.dtype)
        # A fresh tensor, so autograd attaches this node to the output rather than to the caller's input.
        return pre_acts.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, W_enc, b_dec, rows, indices = ctx.saved_tensors
        need_x, need_W, need_b_enc, need_b_dec = ctx.needs_input_grad[:4]
        b_enc_dtype, b_dec_dtype = ctx.dtypes
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if need_W:
            grad_W = _grad_W_enc(x, b_dec, rows, indices, grad, W_enc)
        if need_b_enc or need_b_dec:
            # A [d_sae] vector: index_add_ on the nnz entries is already O(nnz); no kernel needed.
            acc = torch.float64 if torch.float64 in (grad.dtype, W_enc.dtype) else torch.float32
            b_enc_sum = torch.zeros(W_enc.shape[1], dtype=acc, device=grad.device)
            b_enc_sum.index_add_(0, indices, grad.to(acc))
            grad_b_enc = b_enc_sum.to(b_enc_dtype) if need_b_enc else None
            if need_b_dec:
                grad_b_dec = -(W_enc.to(acc) @ b_enc_sum).to(b_dec_dtype)
        if need_x:
            grad_x = _grad_x(indices, rows, grad, W_enc, x)
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None, None, None


def triton_encode_selected(
    x: Float[Tensor, "batch d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    b_dec: Float[Tensor, " d_in"],
    rows: Int[Tensor, " nnz"],
    indices: Int[Tensor, " nnz"],
    pre_acts: Float[Tensor, " nnz"],
) -> Float[Tensor, " nnz"]:
    """Return `pre_acts` (= h[rows, indices], computed by the caller) with a sparse encoder backward.

    Gradients flow to x (if it requires grad), W_enc, b_enc and b_dec, computed from the nnz selected
    entries only; rows may be in any order and repeat any number of times (variable k per row).
    """
    _check_encode_args(x, W_enc, b_enc, b_dec, rows, indices, pre_acts)
    return _EncodeSelected.apply(x, W_enc, b_enc, b_dec, rows, indices, pre_acts)
