"""Two Triton primitives that both sparse ops (decode, selected-entry encoder backward) are built from.

- `segment_gather_sum`: out[s] = Σ_{e in segment s} w[e] · (M[src[e]] − shift) (+ bias), segments given as
  CSR offsets. One program per (segment, column block) walks only its own entries, so a batch whose rows
  hold different numbers of latents costs Σ rows, never B · (longest row).
- `gathered_dot`: out[e] = ⟨A[a_idx[e]], B[b_idx[e]]⟩, one program per block of entries.

Both accumulate in fp32 whatever the storage dtype (fp64 if an operand is fp64), avoid `tl.dot` (wrong
for bf16 under `TRITON_INTERPRET=1`), and take explicit strides so transposed or broadcast (stride-0)
operands need no copy. Shapes and value ranges are checked by the callers (`triton_decode.py`,
`triton_encoder.py`).

    lat_offsets, lat_rows, lat_vals = csr_by_key(latents, rows, vals, n_segments=d_sae)
    dW = segment_gather_sum(lat_offsets, lat_rows, lat_vals, grad_out, out_dtype=torch.float32)
    g_vals = gathered_dot(rows, grad_out, latents, W_dec, out_dtype=torch.float32)
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from jaxtyping import Float, Int
from torch import Tensor

# Entries handled per loop step, and columns per program. 16 x 256 fp32 is a 16 KiB tile: small enough for
# registers on a GPU, large enough that the interpreter (which runs each program as numpy) stays fast.
SEGMENT_BLOCK_E = 16
SEGMENT_MAX_BLOCK_D = 256
DOT_BLOCK_E = 32
DOT_MAX_BLOCK_D = 128


@triton.jit
def _segment_gather_sum_kernel(
    seg_offsets_ptr,  # [S + 1] int64; segment s owns entries seg_offsets[s] : seg_offsets[s + 1]
    src_ptr,  # [nnz] int64; the row of M that entry e reads
    weight_ptr,  # [nnz] float; the scale of entry e
    m_ptr,  # [M_rows, D] float, element (r, c) at r * stride_m_row + c * stride_m_col
    shift_ptr,  # [D] float; subtracted from each gathered row (only read when HAS_SHIFT)
    bias_ptr,  # [D] float; added to each output row (only read when HAS_BIAS)
    out_ptr,  # [S, D] float, element (s, c) at s * stride_out_row + c
    D,
    stride_m_row,
    stride_m_col,
    stride_out_row,
    HAS_SHIFT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,  # accumulator dtype: fp32, or fp64 when an operand is fp64 (gradcheck)
):
    seg = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    start = tl.load(seg_offsets_ptr + seg)
    end = tl.load(seg_offsets_ptr + seg + 1)
    if HAS_SHIFT:
        shift = tl.load(shift_ptr + cols, mask=col_mask, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for block_start in range(start, end, BLOCK_E):
        ent = block_start + tl.arange(0, BLOCK_E)
        ent_mask = ent < end
        src = tl.load(src_ptr + ent, mask=ent_mask, other=0)
        w = tl.load(weight_ptr + ent, mask=ent_mask, other=0.0).to(ACC)
        # Entries whose weight is exactly zero (ReLU'd TopK values) contribute nothing: skip their reads.
        tile_mask = (ent_mask & (w != 0.0))[:, None] & col_mask[None, :]
        tile_ptrs = m_ptr + src[:, None] * stride_m_row + cols[None, :] * stride_m_col
        tile = tl.load(tile_ptrs, mask=tile_mask, other=0.0).to(ACC)
        if HAS_SHIFT:
            # Shift per entry rather than once at the end: Σw·(m − c) keeps the reference's rounding when
            # m and c are large and close, where Σw·m − (Σw)·c would cancel.
            tile = tile - shift[None, :]
        acc += tl.sum(w[:, None] * tile, axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(ACC)
    out_ptrs = out_ptr + seg * stride_out_row + cols
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=col_mask)


@triton.jit
def _gathered_dot_kernel(
    a_idx_ptr,  # [nnz] int64; row of A used by entry e
    b_idx_ptr,  # [nnz] int64; row of B used by entry e
    a_ptr,  # [A_rows, D] float, element (r, c) at r * stride_a_row + c * stride_a_col
    b_ptr,  # [B_rows, D] float, element (r, c) at r * stride_b_row + c * stride_b_col
    out_ptr,  # [nnz] float
    nnz,
    D,
    stride_a_row,
    stride_a_col,
    stride_b_row,
    stride_b_col,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,  # accumulator dtype: fp32, or fp64 when an operand is fp64 (gradcheck)
):
    ent = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    ent_mask = ent < nnz
    a_rows = tl.load(a_idx_ptr + ent, mask=ent_mask, other=0)
    b_rows = tl.load(b_idx_ptr + ent, mask=ent_mask, other=0)
    acc = tl.zeros([BLOCK_E], dtype=ACC)
    for d_start in range(0, D, BLOCK_D):
        cols = d_start + tl.arange(0, BLOCK_D)
        mask = ent_mask[:, None] & (cols < D)[None, :]
        a = tl.load(
            a_ptr + a_rows[:, None] * stride_a_row + cols[None, :] * stride_a_col, mask=mask, other=0.0
        )
        b = tl.load(
            b_ptr + b_rows[:, None] * stride_b_row + cols[None, :] * stride_b_col, mask=mask, other=0.0
        )
        # Elementwise product + row sum instead of tl.dot: the interpreter's bf16 tl.dot is wrong, and a
        # [BLOCK_E] batch of independent dot products is not a matmul anyway.
        acc += tl.sum(a.to(ACC) * b.to(ACC), axis=1)
    tl.store(out_ptr + ent, acc.to(out_ptr.dtype.element_ty), mask=ent_mask)


def segment_gather_sum(
    seg_offsets: Int[Tensor, " n_seg_plus_1"],
    src: Int[Tensor, " nnz"],
    weights: Float[Tensor, " nnz"],
    matrix: Float[Tensor, "m_rows d"],
    *,
    shift: Float[Tensor, " d"] | None = None,
    bias: Float[Tensor, " d"] | None = None,
    out_dtype: torch.dtype,
) -> Float[Tensor, "n_seg d"]:
    """out[s] = Σ_{e in seg s} weights[e]·(matrix[src[e]] − shift) + bias, fp32 accumulation.

    Index vectors must be int64; `matrix` may have any strides (transposed, broadcast).
    Callers validate ranges.
    """
    n_seg = seg_offsets.numel() - 1
    d = matrix.shape[1]
    # 1-D operands are read with unit stride; copying them is O(nnz + d), unlike the matrix.
    seg_offsets, src, weights = seg_offsets.contiguous(), src.contiguous(), weights.contiguous()
    shift = None if shift is None else shift.contiguous()
    bias = None if bias is None else bias.contiguous()
    out = torch.empty(n_seg, d, dtype=out_dtype, device=matrix.device)
    if n_seg == 0 or d == 0:
        return out
    block_d = min(triton.next_power_of_2(d), SEGMENT_MAX_BLOCK_D)
    grid = (n_seg, triton.cdiv(d, block_d))
    # Unused pointer slots get any valid tensor; the constexpr flags keep the kernel from reading them.
    with _on_device(out.device):
        _segment_gather_sum_kernel[grid](
            seg_offsets,
            src,
            weights,
            matrix,
            shift if shift is not None else out,
            bias if bias is not None else out,
            out,
            d,
            matrix.stride(0),
            matrix.stride(1),
            out.stride(0),
            HAS_SHIFT=shift is not None,
            HAS_BIAS=bias is not None,
            BLOCK_E=SEGMENT_BLOCK_E,
            BLOCK_D=block_d,
            ACC=_acc_dtype(weights, matrix, shift, bias),
        )
    return out


def gathered_dot(
    a_idx: Int[Tensor, " nnz"],
    a: Float[Tensor, "a_rows d"],
    b_idx: Int[Tensor, " nnz"],
    b: Float[Tensor, "b_rows d"],
    *,
    out_dtype: torch.dtype,
) -> Float[Tensor, " nnz"]:
    """out[e] = ⟨a[a_idx[e]], b[b_idx[e]]⟩ in fp32, without forming a · bᵀ."""
    nnz = a_idx.numel()
    d = a.shape[1]
    a_idx, b_idx = a_idx.contiguous(), b_idx.contiguous()
    out = torch.empty(nnz, dtype=out_dtype, device=a.device)
    if nnz == 0:
        return out
    if d == 0:
        return out.zero_()
    block_d = min(triton.next_power_of_2(d), DOT_MAX_BLOCK_D)
    grid = (triton.cdiv(nnz, DOT_BLOCK_E),)
    with _on_device(out.device):
        _gathered_dot_kernel[grid](
            a_idx,
            b_idx,
            a,
            b,
            out,
            nnz,
            d,
            a.stride(0),
            a.stride(1),
            b.stride(0),
            b.stride(1),
            BLOCK_E=DOT_BLOCK_E,
            BLOCK_D=block_d,
            ACC=_acc_dtype(a, b),
        )
    return out


def csr_by_key(
    keys: Int[Tensor, " nnz"], *payloads: Tensor, n_segments: int
) -> tuple[Int[Tensor, " n_segments_plus_1"], ...]:
    """Group entries by `keys` (stable sort) and return (offsets, *payloads reordered).

    Offsets come from `searchsorted` rather than `bincount` so that no host sync is needed on CUDA.
    """
    sorted_keys, order = torch.sort(keys, stable=True)
    bounds = torch.arange(n_segments + 1, device=keys.device, dtype=sorted_keys.dtype)
    offsets = torch.searchsorted(sorted_keys, bounds)
    return (offsets, *(p[order].contiguous() for p in payloads))


def row_ids_from_offsets(offsets: Int[Tensor, " batch_plus_1"], nnz: int) -> Int[Tensor, " nnz"]:
    """The row of each CSR entry; `output_size` keeps this free of a host sync on CUDA."""
    counts = offsets[1:] - offsets[:-1]
    rows = torch.arange(counts.numel(), device=offsets.device)
    return torch.repeat_interleave(rows, counts, output_size=nnz)


def check_launchable(*tensors: Tensor | None, op: str) -> torch.device:
    """All tensors on one device that Triton can run on (CUDA, or CPU under TRITON_INTERPRET=1)."""
    present = [t for t in tensors if t is not None]
    devices = {t.device for t in present}
    if len(devices) != 1:
        raise ValueError(
            f"{op}: all tensors must be on one device, got {sorted(map(str, devices))}; "
            "move them with .to(device)"
        )
    device = devices.pop()
    if device.type == "cpu" and not _interpreting():
        raise ValueError(
            f"{op}: Triton kernels need a GPU; got CPU tensors without TRITON_INTERPRET=1. "
            "Use the torch twin (SAEKIT_KERNELS=torch) on CPU, "
            "or set TRITON_INTERPRET=1 before import for tests."
        )
    return device


def _acc_dtype(*tensors: Tensor | None) -> tl.dtype:
    """fp32 accumulation, fp64 only if an operand is fp64 (lets torch.autograd.gradcheck run exactly)."""
    is_fp64 = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return tl.float64 if is_fp64 else tl.float32


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Triton launches on the *current* CUDA device; make that the tensors' device (multi-GPU safety)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
