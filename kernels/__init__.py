"""saekit.kernels — the only two ops through which an SAE decodes and gets its encoder gradients.

Both take a CSR-shaped sparse code (row b owns entries offsets[b]:offsets[b+1], rows may be empty) and
accumulate in fp32. The backend is chosen once per process (`SAEKIT_KERNELS=auto|triton|torch`, see
`backend.py`): Triton kernels on CUDA tensors (or under `TRITON_INTERPRET=1` when forced, for tests), the
pure-torch twins in `torch_ops` otherwise, so callers never change.

    from saekit.kernels import encode_selected, sparse_decode
    pre = encode_selected(x, W_enc, b_enc, b_dec, rows, indices, h_selected)     # attaches autograd
    x_hat = sparse_decode(indices, torch.relu(pre), offsets, W_dec, b_dec)

On CUDA the encoder GEMM itself can be fused with the per-row top-k (`fused_topk.fused_encode_topk`, used by
`saekit.sae.fused_select`), so the dense pre-activations are never written to memory.
"""

from __future__ import annotations

import os

from jaxtyping import Float, Int
from torch import Tensor

from .backend import kernel_backend
from .torch_ops import encode_selected_torch, sparse_decode_torch

__all__ = ["encode_selected", "kernel_backend", "sparse_decode"]


def sparse_decode(
    indices: Int[Tensor, " nnz"],
    values: Float[Tensor, " nnz"],
    offsets: Int[Tensor, " batch_plus_1"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"] | None = None,
) -> Float[Tensor, "batch d_in"]:
    """x̂[b] = Σ_{e in row b} values[e]·W_dec[indices[e]] (+ b_dec), accumulated and returned in fp32.

    Differentiable w.r.t. values, W_dec and b_dec. Nothing dense of shape [batch, d_sae] is built.
    """
    _check_code(indices, values, offsets)
    assert W_dec.dim() == 2, f"W_dec must be [d_sae, d_in], got {tuple(W_dec.shape)}"
    if _use_triton(W_dec):
        from .triton_decode import triton_sparse_decode

        return triton_sparse_decode(indices, values, offsets, W_dec, b_dec).float()
    return sparse_decode_torch(indices, values, offsets, W_dec, b_dec)


def encode_selected(
    x: Float[Tensor, "batch d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    b_dec: Float[Tensor, " d_in"],
    rows: Int[Tensor, " nnz"],
    indices: Int[Tensor, " nnz"],
    pre_acts: Float[Tensor, " nnz"],
) -> Float[Tensor, " nnz"]:
    """Selected pre-activations h[rows, indices] (h = (x − b_dec) W_enc + b_enc, computed under no_grad)
    returned in fp32 and attached to autograd. The backward uses only the nnz gradient entries:
    ∂b_enc = per-latent sums, ∂W_enc[:, i] = Σ_{e: idx_e = i} g_e (x − b_dec)[row_e], ∂b_dec = −W_enc ∂b_enc,
    and ∂x only when x requires grad. Latents never selected get exactly zero gradient.
    """
    assert rows.shape == indices.shape == pre_acts.shape, "rows, indices and pre_acts must all be [nnz]"
    assert x.dim() == 2 and W_enc.shape == (x.shape[1], b_enc.shape[0]), (
        f"W_enc must be [d_in, d_sae] = [{x.shape[1]}, {b_enc.shape[0]}], got {tuple(W_enc.shape)}"
    )
    if _use_triton(W_enc):
        from .triton_encoder import triton_encode_selected

        return triton_encode_selected(x, W_enc, b_enc, b_dec, rows, indices, pre_acts).float()
    return encode_selected_torch(x, W_enc, b_enc, b_dec, rows, indices, pre_acts)


def _use_triton(weight: Tensor) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors only under the interpreter (forced for tests)."""
    if kernel_backend() != "triton":
        return False
    return weight.is_cuda or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check_code(indices: Tensor, values: Tensor, offsets: Tensor) -> None:
    # Shape/dtype checks only: anything data-dependent would force a device sync on every call.
    assert indices.dim() == 1 and indices.shape == values.shape, "indices and values must both be [nnz]"
    assert offsets.dim() == 1 and offsets.numel() >= 1, "offsets must be [batch + 1]"
    assert indices.dtype == offsets.dtype, "indices and offsets must share an integer dtype (int64)"
