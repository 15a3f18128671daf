"""Pure-torch twins of the sparse SAE kernels: the CPU backend, and the oracle for the Triton kernels.

Two ops, both working on a CSR-shaped sparse code (row b owns entries offsets[b]:offsets[b+1]):

* `sparse_decode_torch` — x̂[b] = Σ_e values[e]·W_dec[indices[e]] (+ b_dec), via `F.embedding_bag` with its
  native autograd (design.md §5: 0.11-0.14 of an encoder GEMM, fastest of the torch options measured).
* `encode_selected_torch` — attaches already-computed selected pre-activations to autograd; its backward
  builds the encoder gradients from the nnz entries only, never a dense [B, d_sae] tensor.

    x_hat = sparse_decode_torch(code.indices, code.values, code.offsets, W_dec, b_dec)
    pre = encode_selected_torch(x, W_enc, b_enc, b_dec, rows, indices, h_selected)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def accumulation_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp32, or fp64 when an input is fp64 (so gradcheck stays exact); half inputs are upcast."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def sparse_decode_torch(
    indices: Int[Tensor, " nnz"],
    values: Float[Tensor, " nnz"],
    offsets: Int[Tensor, " batch_plus_1"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"] | None = None,
) -> Float[Tensor, "batch d_in"]:
    """Decode a CSR code. Output is fp32 (fp64 if an input is fp64); rows may have no entries.

    Differentiable w.r.t. `values`, `W_dec` and `b_dec` through embedding_bag's own backward; the dense
    W_dec gradient it produces is non-zero only on the rows that were used.
    """
    dtype = accumulation_dtype(values, W_dec, b_dec)
    # embedding_bag wants the bag starts only (B entries); empty bags come out as zero rows.
    out = F.embedding_bag(
        indices,
        W_dec.to(dtype),
        offsets[:-1],
        mode="sum",
        per_sample_weights=values.to(dtype),
    )
    if b_dec is not None:
        out = out + b_dec.to(dtype)
    return out


class _EncodeSelected(torch.autograd.Function):
    """Identity on the selected pre-activations; backward routes their gradient to the encoder."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, rows, indices, pre_acts):
        ctx.save_for_backward(x, W_enc, b_dec, rows, indices)
        ctx.d_sae = b_enc.shape[0]
        ctx.b_enc_dtype = b_enc.dtype
        dtype = accumulation_dtype(pre_acts, W_enc)
        # A fresh tensor (not pre_acts itself) so autograd never sees an input returned unchanged.
        return pre_acts.to(dtype, copy=True)

    @staticmethod
    def backward(ctx, grad):
        x, W_enc, b_dec, rows, indices = ctx.saved_tensors
        need_x, need_w, need_benc, need_bdec = ctx.needs_input_grad[:4]
        dtype = accumulation_dtype(grad, W_enc, x)
        grad = grad.to(dtype)
        d_sae = ctx.d_sae
        grad_x = grad_w = grad_benc = grad_bdec = None
        per_latent = None
        if need_benc or need_bdec:
            per_latent = torch.zeros(d_sae, dtype=dtype, device=grad.device).index_add_(0, indices, grad)
        if need_w:
            x_centered = x.to(dtype) - b_dec.to(dtype)
            grad_w = _grouped_weight_grad(x_centered, rows, indices, grad, d_sae).t().to(W_enc.dtype)
        if need_benc:
            grad_benc = per_latent.to(ctx.b_enc_dtype)
        if need_bdec:
            # h depends on b_dec through (x − b_dec) W_enc, so ∂b_dec = −W_enc · (per-latent grad sums).
            grad_bdec = -(W_enc.to(dtype) @ per_latent).to(b_dec.dtype)
        if need_x:
            contrib = W_enc.to(dtype).t().index_select(0, indices) * grad[:, None]
            grad_x = torch.zeros(x.shape, dtype=dtype, device=x.device).index_add_(0, rows, contrib)
            grad_x = grad_x.to(x.dtype)
        return grad_x, grad_w, grad_benc, grad_bdec, None, None, None


def _grouped_weight_grad(
    x_centered: Float[Tensor, "batch d_in"],
    rows: Int[Tensor, " nnz"],
    indices: Int[Tensor, " nnz"],
    grad: Float[Tensor, " nnz"],
    d_sae: int,
) -> Float[Tensor, "d_sae d_in"]:
    """Σ_{e: idx_e = i} grad_e · x_centered[row_e] for every latent i, latent-major.

    Sorting the entries by latent turns the scatter into one embedding_bag with a bag per latent
    (design.md §5: 0.04 of an encoder GEMM, vs 0.23 for index_add_ over a [nnz, d_in] buffer).
    """
    order = torch.argsort(indices)
    counts = torch.bincount(indices, minlength=d_sae)
    starts = torch.zeros(d_sae, dtype=torch.long, device=indices.device)
    starts[1:] = torch.cumsum(counts, 0)[:-1]
    return F.embedding_bag(
        rows.index_select(0, order), x_centered, starts, mode="sum", per_sample_weights=grad[order]
    )


def encode_selected_torch(
    x: Float[Tensor, "batch d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    b_dec: Float[Tensor, " d_in"],
    rows: Int[Tensor, " nnz"],
    indices: Int[Tensor, " nnz"],
    pre_acts: Float[Tensor, " nnz"],
) -> Float[Tensor, " nnz"]:
    """Return `pre_acts` (h[rows, indices] of h = (x − b_dec) W_enc + b_enc, computed without grad) with a
    sparse backward: ∂b_enc, ∂W_enc, ∂b_dec (and ∂x if x requires grad) from the nnz gradient entries."""
    return _EncodeSelected.apply(x, W_enc, b_enc, b_dec, rows, indices, pre_acts)
