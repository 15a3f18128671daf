"""The encoder GEMM fused with the per-row top-k on Triton: h = x_c W_encᵀ + b_enc never leaves the chip.

Grid: (row blocks of BLOCK_M rows) × (latent splits). A program computes its rows' h one [BLOCK_M, BLOCK_N]
tile at a time (`tl.dot`, fp32 accumulation; bf16 operands when asked) and folds each tile into a running
top-K held in registers: while some row's tile maximum beats that row's running minimum, the maximum
replaces the minimum and is struck from the tile. After the first tiles the running minima are high, so
most tiles fold in a step or two. Each split writes its rows' K best (value, latent) pairs; one `torch.topk`
over the splits' candidates ([B, splits·K], tiny next to h) gives the answer. Selected set: exact up to the
GEMM's rounding (fp32 with IEEE products, so it matches the dense path except between values equal to the
last bits); ties keep the values' multiset, as `torch.topk` does.

The backward needs only the selected entries (`saekit.kernels.encode_selected`), so this op has none.

    values, indices = fused_encode_topk(x - b_dec, W_enc_T, b_enc, k)     # [B, k] each, unsorted
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from jaxtyping import Float, Int
from torch import Tensor

from .triton_segment import _on_device, check_launchable

_OP = "fused_encode_topk"
BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}
"""GPU tile: 64×64 fp32 accumulators plus a 64×K running top-k per program."""
TARGET_SPLITS = 16
"""Latent splits per row block: enough programs to fill a GPU at B=4096 (64 row blocks × 16)."""


@triton.jit
def _encode_topk_kernel(
    x_ptr,  # [B, D_IN] centred inputs, row stride stride_x
    w_ptr,  # [D_SAE, D_IN] W_enc_T (latent-major), row stride stride_w
    b_ptr,  # [D_SAE] b_enc
    val_ptr,  # [B, SPLITS, K] out: each split's K best values per row (fp32)
    idx_ptr,  # [B, SPLITS, K] out: their latent ids (int64)
    B,
    D_IN,
    D_SAE,
    per_split,
    n_splits,
    stride_x,
    stride_w,
    K: tl.constexpr,
    KP: tl.constexpr,  # K rounded up to a power of two (register tile width)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BF16: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    split = tl.program_id(1)
    row_mask = rows < B
    slots = tl.arange(0, KP)
    # Padding slots hold +inf so they are never the minimum: only the first K slots are ever replaced.
    run_v = tl.where(slots[None, :] < K, float("-inf"), float("inf")) + tl.zeros([BLOCK_M, KP], tl.float32)
    run_i = tl.zeros([BLOCK_M, KP], tl.int64)
    lat_start = split * per_split
    lat_end = tl.minimum(lat_start + per_split, D_SAE)
    for n0 in range(lat_start, lat_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < lat_end
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, D_IN, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < D_IN
            a = tl.load(
                x_ptr + rows[:, None] * stride_x + ks[None, :], row_mask[:, None] & k_mask[None, :], 0.0
            )
            w = tl.load(
                w_ptr + cols[None, :] * stride_w + ks[:, None], k_mask[:, None] & col_mask[None, :], 0.0
            )
            if BF16:
                acc = tl.dot(a.to(tl.bfloat16), w.to(tl.bfloat16), acc)
            else:
                acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        acc += tl.load(b_ptr + cols, col_mask, 0.0).to(tl.float32)[None, :]
        acc = tl.where(row_mask[:, None] & col_mask[None, :], acc, float("-inf"))
        tile_max = tl.max(acc, axis=1)
        run_min = tl.min(run_v, axis=1)
        moved = 0
        while (tl.max((tile_max > run_min).to(tl.int32), axis=0) > 0) & (moved < K):
            take = tile_max > run_min
            tile_arg = tl.argmax(acc, axis=1)
            run_arg = tl.argmin(run_v, axis=1)
            update = (slots[None, :] == run_arg[:, None]) & take[:, None]
            run_v = tl.where(update, tile_max[:, None], run_v)
            run_i = tl.where(update, (n0 + tile_arg).to(tl.int64)[:, None], run_i)
            struck = (tl.arange(0, BLOCK_N)[None, :] == tile_arg[:, None]) & take[:, None]
            acc = tl.where(struck, float("-inf"), acc)
            tile_max = tl.max(acc, axis=1)
            run_min = tl.min(run_v, axis=1)
            moved += 1
    out = (rows[:, None] * n_splits + split) * K + slots[None, :]
    out_mask = row_mask[:, None] & (slots[None, :] < K)
    tl.store(val_ptr + out, run_v, out_mask)
    tl.store(idx_ptr + out, run_i, out_mask)


def _check(x: Tensor, W_enc_T: Tensor, b_enc: Tensor, k: int) -> None:
    check_launchable(x, W_enc_T, b_enc, op=_OP)
    if x.ndim != 2 or W_enc_T.ndim != 2 or x.shape[1] != W_enc_T.shape[1]:
        raise ValueError(
            f"{_OP}: expected x [B, d_in] and W_enc_T [d_sae, d_in], "
            f"got {tuple(x.shape)}, {tuple(W_enc_T.shape)}"
        )
    if b_enc.shape != (W_enc_T.shape[0],):
        raise ValueError(f"{_OP}: b_enc must be [d_sae]={W_enc_T.shape[0]}, got {tuple(b_enc.shape)}")
    if not 1 <= k <= W_enc_T.shape[0]:
        raise ValueError(f"{_OP}: k must lie in [1, d_sae={W_enc_T.shape[0]}], got {k}")


@torch.no_grad()
def fused_encode_topk(
    x_centered: Float[Tensor, "batch d_in"],
    W_enc_T: Float[Tensor, "d_sae d_in"],
    b_enc: Float[Tensor, " d_sae"],
    k: int,
    *,
    bf16: bool = False,
    blocks: dict[str, int] | None = None,
    splits: int | None = None,
) -> tuple[Float[Tensor, "batch k"], Int[Tensor, "batch k"]]:
    """Per-row top-k (fp32 values, int64 latent ids; unsorted) of x_centered W_enc_Tᵀ + b_enc, no h built.
    `bf16`: GEMM operands in bf16 (fp32 accumulation; not under the interpreter, whose bf16 dot is wrong)."""
    _check(x_centered, W_enc_T, b_enc, k)
    blocks = dict(BLOCKS if blocks is None else blocks)
    batch, d_in = x_centered.shape
    d_sae = W_enc_T.shape[0]
    x_centered = x_centered.contiguous()
    W_enc_T = W_enc_T.contiguous()
    n_splits = splits or max(1, min(TARGET_SPLITS, d_sae // (blocks["BLOCK_N"] * 4)))
    per_split = triton.cdiv(triton.cdiv(d_sae, n_splits), blocks["BLOCK_N"]) * blocks["BLOCK_N"]
    n_splits = triton.cdiv(d_sae, per_split)
    device = x_centered.device
    # -inf / 0 where a split has fewer than k latents: such candidates lose the final top-k (d_sae ≥ k).
    vals = torch.full((batch, n_splits, k), float("-inf"), dtype=torch.float32, device=device)
    idx = torch.zeros((batch, n_splits, k), dtype=torch.long, device=device)
    grid = (triton.cdiv(batch, blocks["BLOCK_M"]), n_splits)
    with _on_device(device):
        _encode_topk_kernel[grid](
            x_centered, W_enc_T, b_enc, vals, idx, batch, d_in, d_sae, per_split, n_splits,
            x_centered.stride(0), W_enc_T.stride(0),
            K=k, KP=triton.next_power_of_2(k), BF16=bf16, **blocks,
        )  # fmt: skip
    if n_splits == 1:
        return vals[:, 0], idx[:, 0]
    top, pick = torch.topk(vals.view(batch, n_splits * k), k, dim=1, sorted=False)
    return top, idx.view(batch, n_splits * k).gather(1, pick)
