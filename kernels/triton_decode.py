"""Sparse decode on Triton: x̂[b] = Σ_{e in row b} values[e] · W_dec[indices[e]] (+ b_dec), CSR rows.

Forward is one program per (row, column block) walking only that row's entries, so BatchTopK / Feature-
Choice codes with uneven rows pay for their entries, not for the longest row. Backward:
- ∂values[e] = ⟨G[row_e], W_dec[idx_e]⟩: a gathered dot per entry (never G · W_decᵀ);
- ∂W_dec[i] = Σ_{e: idx_e = i} values[e] · G[row_e]: entries are sorted by latent and each latent's run is
  summed by one program (a transposed CSR), so the result is deterministic and needs no atomics;
- ∂b_dec = Σ_b G[b].
All sums run in fp32; outputs and gradients come back in the dtype of the tensor they belong to.

    code = SparseCode.from_topk(vals, idx, d_sae)
    x_hat = triton_sparse_decode(code.indices, code.values, code.offsets, W_dec, b_dec)
    x_hat.pow(2).sum().backward()   # fills W_dec.grad, b_dec.grad (and vals.grad if it requires grad)
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable

from .triton_segment import (
    check_launchable,
    csr_by_key,
    gathered_dot,
    row_ids_from_offsets,
    segment_gather_sum,
)

_OP = "triton_sparse_decode"


def _check_decode_args(
    indices: Tensor, values: Tensor, offsets: Tensor, W_dec: Tensor, b_dec: Tensor | None
) -> None:
    """Shape/dtype/device checks with the fix in each message; value checks only where they are free."""
    check_launchable(indices, values, offsets, W_dec, b_dec, op=_OP)
    if indices.dtype != torch.long or offsets.dtype != torch.long:
        raise ValueError(
            f"{_OP}: indices and offsets must be int64, got {indices.dtype} and {offsets.dtype}; call .long()"
        )
    if not (values.is_floating_point() and W_dec.is_floating_point()):
        raise ValueError(f"{_OP}: values and W_dec must be floating point, got {values.dtype}, {W_dec.dtype}")
    if indices.ndim != 1 or values.shape != indices.shape:
        raise ValueError(
            f"{_OP}: indices and values must be 1-D and equally long (flattened CSR entries), "
            f"got {tuple(indices.shape)} and {tuple(values.shape)}; use SparseCode.from_topk for [B, k] codes"
        )
    if offsets.ndim != 1 or offsets.numel() < 1:
        raise ValueError(f"{_OP}: offsets must be 1-D of length batch + 1, got shape {tuple(offsets.shape)}")
    if W_dec.ndim != 2:
        raise ValueError(f"{_OP}: W_dec must be [d_sae, d_in], got shape {tuple(W_dec.shape)}")
    if b_dec is not None and b_dec.shape != (W_dec.shape[1],):
        raise ValueError(f"{_OP}: b_dec must be [d_in]={W_dec.shape[1]}, got shape {tuple(b_dec.shape)}")
    # On CUDA these checks would cost a host sync per step, so they run only on the CPU interpreter path,
    # where the tests exercise them; on a GPU, out-of-range CSR data is a caller bug that reads wild memory.
    if not indices.is_cuda:
        _check_csr_values(indices, offsets, W_dec.shape[0])


def _check_csr_values(indices: Tensor, offsets: Tensor, d_sae: int) -> None:
    nnz = indices.numel()
    if offsets[0].item() != 0 or offsets[-1].item() != nnz or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(
            f"{_OP}: offsets must start at 0, never decrease and end at nnz={nnz}; "
            f"got {offsets[:4].tolist()}...{offsets[-1].item()}"
        )
    if nnz and (indices.min().item() < 0 or indices.max().item() >= d_sae):
        raise ValueError(f"{_OP}: latent indices must lie in [0, d_sae={d_sae}); check the code's d_sae")


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, indices, values, offsets, W_dec, b_dec):
        out = segment_gather_sum(offsets, indices, values, W_dec, bias=b_dec, out_dtype=W_dec.dtype)
        ctx.save_for_backward(indices, values, offsets, W_dec)
        ctx.b_dec_dtype = None if b_dec is None else b_dec.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        indices, values, offsets, W_dec = ctx.saved_tensors
        _, need_values, _, need_W, need_b = ctx.needs_input_grad
        grad_values = grad_W = grad_b = None
        if need_values or need_W:
            rows = row_ids_from_offsets(offsets, indices.numel())
        if need_values:
            grad_values = gathered_dot(rows, grad_out, indices, W_dec, out_dtype=values.dtype)
        if need_W:
            # Group the entries by latent so each ∂W_dec row is one program's private sum.
            lat_offsets, lat_rows, lat_values = csr_by_key(indices, rows, values, n_segments=W_dec.shape[0])
            grad_W = segment_gather_sum(lat_offsets, lat_rows, lat_values, grad_out, out_dtype=W_dec.dtype)
        if need_b:
            acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
            grad_b = grad_out.sum(0, dtype=acc).to(ctx.b_dec_dtype)
        return None, grad_values, None, grad_W, grad_b


def triton_sparse_decode(
    indices: Int[Tensor, " nnz"],
    values: Float[Tensor, " nnz"],
    offsets: Int[Tensor, " batch_plus_1"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"] | None = None,
) -> Float[Tensor, "batch d_in"]:
    """Decode a CSR sparse code: row b sums values[e]·W_dec[indices[e]] over e in offsets[b]:offsets[b+1].

    Rows may hold zero or many entries. Accumulates in fp32 and returns W_dec's dtype; differentiable in
    values, W_dec and b_dec. Tensors must share a CUDA device (or CPU with TRITON_INTERPRET=1).
    """
    _check_decode_args(indices, values, offsets, W_dec, b_dec)
    return _SparseDecode.apply(indices, values, offsets, W_dec, b_dec)
