"""The encoder GEMM fused with selection: h is computed tile by tile and folded into the selection at once.

Instead of writing the whole h = (x − b_dec) W_enc + b_enc ([B, d_sae], 256 MiB at B=4096, d_sae=16384)
and reading it back for the top-k, rows are taken `tiling.rows` at a time and latents `tiling.latents` at
a time. Each [rows, latents] tile (a few MiB, cache-resident) is selected from right after its GEMM:
- per-row top-k: the tile's own top-k (`row_topk`), merged with the row's running top-k;
- threshold rule: the tile's entries above θ;
- AuxK: the tile's dead columns are copied into the [B, n_dead] slice AuxK needs.
So peak memory holds one tile instead of h, and h never round-trips through DRAM.

Same selection as the dense path: each h entry is the same fp32 dot product (the GEMM library sums over
d_in the same way for a tile as for the whole matrix; `tests/test_fused_encode.py` checks bit equality
against the dense path on this machine), and the top-k of a row is the top-k of its tiles' top-ks. Tie
rule (as for `row_topk` and `torch.topk`): the selected values are equal as a multiset; which of several
tied columns is picked is unspecified. The backward is unchanged (it only needs the selected entries, see
`saekit.kernels.encode_selected`).

    values, indices, aux = fused_row_topk(x - b_dec, W_enc_T, b_enc, k, Tiling(1024, 4096), aux_columns)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saekit.sae.row_topk import row_topk


@dataclass(frozen=True)
class Tiling:
    """Tile shape of the fused encoder: rows of x and latents (columns of h) per GEMM call."""

    rows: int
    latents: int

    def clamp(self, batch: int, d_sae: int, k: int) -> Tiling:
        """The tile that fits these shapes: no wider than h, and at least k latents wide."""
        return Tiling(min(self.rows, batch), min(d_sae, max(self.latents, k)))

    def label(self) -> str:
        return f"{self.rows}x{self.latents}"


_TILE_BUFFER: list[Tensor] = []
"""The one reused tile buffer: a fresh one would be page-faulted in on every step (as a fresh h would)."""


def _tile_buffer(rows: int, latents: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if _TILE_BUFFER:
        t = _TILE_BUFFER[0]
        if t.dtype == dtype and t.device == device and t.shape[0] >= rows and t.shape[1] >= latents:
            return t[:rows, :latents]
        _TILE_BUFFER.clear()  # free the old one before allocating its replacement
    _TILE_BUFFER.append(torch.empty(rows, latents, dtype=dtype, device=device))
    return _TILE_BUFFER[0]


def _tiles(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _aux_slices(aux_columns: Int[Tensor, " n_aux"] | None, bounds: list[tuple[int, int]]) -> list:
    """Per latent tile: (positions in the aux output, columns local to the tile) of the sorted aux columns."""
    if aux_columns is None:
        return [None] * len(bounds)
    cols = aux_columns.to("cpu")
    assert bool((cols[1:] > cols[:-1]).all()), "aux_columns must be strictly increasing (as torch.nonzero)"
    edges = torch.searchsorted(cols, torch.tensor([b[0] for b in bounds] + [bounds[-1][1]]))
    out = []
    for i, (c0, _) in enumerate(bounds):
        a0, a1 = int(edges[i]), int(edges[i + 1])
        out.append((a0, a1, aux_columns[a0:a1] - c0) if a1 > a0 else None)
    return out


def _merge_topk(
    run: tuple[Tensor, Tensor] | None, tile: tuple[Tensor, Tensor], k: int
) -> tuple[Tensor, Tensor]:
    """Top-k of a row's running (values, indices) and a tile's, both [rows, k]."""
    if run is None:
        return tile
    values = torch.cat([run[0], tile[0]], dim=1)
    indices = torch.cat([run[1], tile[1]], dim=1)
    top, pick = torch.topk(values, k, dim=1, sorted=False)
    return top, indices.gather(1, pick)


@torch.no_grad()
def fused_row_topk(
    x_centered: Float[Tensor, "batch d_in"],
    W_enc_T: Float[Tensor, "d_sae d_in"],
    b_enc: Float[Tensor, " d_sae"],
    k: int,
    tiling: Tiling,
    aux_columns: Int[Tensor, " n_aux"] | None = None,
) -> tuple[Float[Tensor, "batch k"], Int[Tensor, "batch k"], Float[Tensor, "batch n_aux"] | None]:
    """Per-row top-k (values, column indices; unsorted within a row) of h = x_centered W_enc_T.T + b_enc,
    and h[:, aux_columns] when asked, without materialising h."""
    batch, d_sae = x_centered.shape[0], W_enc_T.shape[0]
    tiling = tiling.clamp(batch, d_sae, k)
    dtype, device = x_centered.dtype, x_centered.device
    values = torch.empty(batch, k, dtype=dtype, device=device)
    indices = torch.empty(batch, k, dtype=torch.long, device=device)
    latent_tiles = _tiles(d_sae, tiling.latents)
    aux_parts = _aux_slices(aux_columns, latent_tiles)
    aux = None if aux_columns is None else torch.empty(batch, aux_columns.numel(), dtype=dtype, device=device)
    buffer = _tile_buffer(tiling.rows, tiling.latents, dtype, device)
    for r0, r1 in _tiles(batch, tiling.rows):
        rows = x_centered[r0:r1]
        run = None
        for (c0, c1), aux_part in zip(latent_tiles, aux_parts, strict=True):
            h = torch.addmm(b_enc[c0:c1], rows, W_enc_T[c0:c1].t(), out=buffer[: r1 - r0, : c1 - c0])
            tile_vals, tile_idx = row_topk(h, min(k, c1 - c0))
            run = _merge_topk(run, (tile_vals, tile_idx + c0), k)
            if aux_part is not None:
                a0, a1, local = aux_part
                torch.index_select(h, 1, local, out=aux[r0:r1, a0:a1])
        values[r0:r1], indices[r0:r1] = run
    return values, indices, aux


@torch.no_grad()
def fused_threshold(
    x_centered: Float[Tensor, "batch d_in"],
    W_enc_T: Float[Tensor, "d_sae d_in"],
    b_enc: Float[Tensor, " d_sae"],
    threshold: Float[Tensor, " d_sae"],
    tiling: Tiling,
) -> tuple[Int[Tensor, " nnz"], Int[Tensor, " nnz"], Float[Tensor, " nnz"]]:
    """(rows, columns, values) of every entry with h > threshold (per latent), in row-major order (each
    row's columns ascending), as `torch.nonzero(h > threshold)` on the dense h gives them."""
    batch, d_sae = x_centered.shape[0], W_enc_T.shape[0]
    tiling = tiling.clamp(batch, d_sae, 1)
    buffer = _tile_buffer(tiling.rows, tiling.latents, x_centered.dtype, x_centered.device)
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    for r0, r1 in _tiles(batch, tiling.rows):
        tile_parts = []
        for c0, c1 in _tiles(d_sae, tiling.latents):
            h = torch.addmm(
                b_enc[c0:c1], x_centered[r0:r1], W_enc_T[c0:c1].t(), out=buffer[: r1 - r0, : c1 - c0]
            )
            r, c = torch.nonzero(h > threshold[c0:c1], as_tuple=True)
            tile_parts.append((r + r0, c + c0, h[r, c]))
        rows = torch.cat([p[0] for p in tile_parts])
        order = torch.argsort(rows, stable=True)  # tiles were visited latent-block by latent-block
        parts.append(
            (
                rows[order],
                torch.cat([p[1] for p in tile_parts])[order],
                torch.cat([p[2] for p in tile_parts])[order],
            )
        )
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


@torch.no_grad()
def pre_act_rows(
    x_centered: Float[Tensor, "batch d_in"],
    W_enc_T: Float[Tensor, "d_sae d_in"],
    b_enc: Float[Tensor, " d_sae"],
    rows: Int[Tensor, " n"],
) -> Float[Tensor, "n d_sae"]:
    """h at a few rows (e.g. BatchTopK's saturated rows), recomputed: the same dot products as the dense h."""
    return torch.addmm(b_enc, x_centered.index_select(0, rows), W_enc_T.t())
