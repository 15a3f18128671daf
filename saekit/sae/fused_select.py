"""The fused encoder paths as the activations call them: a selection straight from x, or None (dense path).

Each function returns None when the dense path should run instead (CUDA without Triton, a bf16 encoder
GEMM, a small problem, or the measured choice on this machine: `saekit.sae.encode_path`), so an
activation's `select_fused` can fall through to its dense `select` unchanged.

    picked = fused_topk_select(sae, x, k, aux_columns)       # (SparseCode, aux h) | None
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saekit.kernels import kernel_backend
from saekit.sae.encode_path import TILING, choose_cpu_path, note_choice
from saekit.sae.fused_encode import fused_row_topk, fused_threshold, pre_act_rows
from saekit.sae.precision import encoder_gemm_dtype
from saekit.sae.row_topk import row_topk
from saekit.types import SparseCode, offsets_from_rows

if TYPE_CHECKING:
    from saekit.sae.model import Sae

Selected = tuple[SparseCode, Float[Tensor, "batch n_aux"] | None]


def _fp32_cpu(sae: Sae, x: Tensor) -> bool:
    return x.device.type == "cpu" and encoder_gemm_dtype(sae.cfg.encoder_bf16, x.device) == torch.float32


def _increasing(columns: Tensor) -> bool:
    return bool((columns[1:] > columns[:-1]).all())


def _dense_twin(xc: Tensor, sae: Sae, select: Callable[[Tensor], object]) -> Callable[[], object]:
    """The dense path as the step runs it (GEMM into a warm buffer, then the selection), for measuring;
    the buffer exists only while a measurement holds this closure."""
    buffer: list[Tensor] = []

    def run() -> object:
        if not buffer:
            buffer.append(torch.empty(xc.shape[0], sae.d_sae, dtype=xc.dtype))
        return select(torch.addmm(sae.b_enc, xc, sae.W_enc_T.t(), out=buffer[0]))

    return run


@torch.no_grad()
def fused_topk_select(
    sae: Sae, x: Float[Tensor, "batch d_in"], k: int, aux_columns: Int[Tensor, " n_aux"] | None
) -> Selected | None:
    """Per-row top-k of h (and h[:, aux_columns]) without a dense h, or None for the dense path."""
    batch, d_sae = x.shape[0], sae.d_sae
    if x.is_cuda and kernel_backend() == "triton":
        xc = x - sae.b_dec
        from saekit.kernels.fused_topk import fused_encode_topk

        values, indices = fused_encode_topk(xc, sae.W_enc_T, sae.b_enc, k, bf16=sae.cfg.encoder_bf16)
        note_choice("fused", "Triton encoder+top-k kernel on CUDA")
        sae.encoder_gemm_ran = torch.bfloat16 if sae.cfg.encoder_bf16 else torch.float32
        aux = None
        if aux_columns is not None:
            aux = torch.addmm(sae.b_enc[aux_columns], xc, sae.W_enc_T[aux_columns].t())
        return SparseCode.from_topk(values, indices, d_sae), aux
    if not _fp32_cpu(sae, x) or (aux_columns is not None and not _increasing(aux_columns)):
        return None  # the tiles copy AuxK columns in order: unsorted ones (never from the trainer) go dense
    xc = x - sae.b_dec

    def fused() -> tuple:
        return fused_row_topk(xc, sae.W_enc_T, sae.b_enc, k, TILING, aux_columns)

    dense = _dense_twin(xc, sae, lambda h: row_topk(h, k))
    if choose_cpu_path("topk", (batch, x.shape[1], d_sae, k), dense, fused) == "dense":
        return None
    values, indices, aux = fused()
    sae.encoder_gemm_ran = torch.float32
    return SparseCode.from_topk(values, indices, d_sae), aux


@torch.no_grad()
def fused_row_candidates(
    sae: Sae, x: Float[Tensor, "batch d_in"], per_row: int
) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]] | None:
    """(values, columns) of each row's top `per_row` entries of h, and a function giving h at some rows
    (recomputed), for the batch-level top-k; None for the dense path."""
    if not _fp32_cpu(sae, x):
        return None
    xc = x - sae.b_dec

    def fused() -> tuple:
        return fused_row_topk(xc, sae.W_enc_T, sae.b_enc, per_row, TILING)

    dense = _dense_twin(xc, sae, lambda h: row_topk(h, per_row))
    shape = (x.shape[0], x.shape[1], sae.d_sae, per_row)
    if choose_cpu_path("row_candidates", shape, dense, fused) == "dense":
        return None
    values, columns, _ = fused()
    sae.encoder_gemm_ran = torch.float32
    return values, columns, lambda rows: pre_act_rows(xc, sae.W_enc_T, sae.b_enc, rows)


@torch.no_grad()
def fused_threshold_select(
    sae: Sae, x: Float[Tensor, "batch d_in"], threshold: Float[Tensor, " d_sae"]
) -> SparseCode | None:
    """Entries with h > threshold, grouped by row (same order as the dense rule), or None for dense."""
    if not _fp32_cpu(sae, x):
        return None
    xc = x - sae.b_dec

    def fused() -> tuple:
        return fused_threshold(xc, sae.W_enc_T, sae.b_enc, threshold, TILING)

    dense = _dense_twin(xc, sae, lambda h: torch.nonzero(h > threshold, as_tuple=True))
    if choose_cpu_path("threshold", (x.shape[0], x.shape[1], sae.d_sae, 0), dense, fused) == "dense":
        return None
    rows, cols, values = fused()
    sae.encoder_gemm_ran = torch.float32
    return SparseCode(values, cols, offsets_from_rows(rows, x.shape[0]), sae.d_sae, rows)
