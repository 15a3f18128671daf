"""Streaming per-latent accumulators for the index: statistics, a self-widening histogram, top-k examples.

Everything is memory-bounded by d_sae (never by the number of tokens seen): counts and sums are [d_sae],
the histogram is [d_sae, FINE_BINS], and each example keeper holds [d_sae, K] scores plus [d_sae, K, W]
windows. Batches are offered one after another; the keepers merge each batch's candidates into their
running top-K.

    stats = LatentStats(d_sae); stats.update(latents, values)
    top = ExampleKeeper(d_sae, k=20, window=21); top.offer(Candidates(...))
    q = stats.quantiles((0.5, 0.9))        # approximate, within one histogram bin
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saekit.analysis.format import FINE_BINS

FP16_MAX = 65504.0


class LatentStats:
    """Firing counts, activation sums and maxima, and a histogram of non-zero activations per latent.

    The histogram has `bins` equal-width bins starting at 0 with a per-latent width. The width is set when
    a latent first fires (so its first maximum sits mid-range) and doubled — merging pairs of bins, which
    is exact — whenever a larger activation arrives. Every non-zero activation is counted exactly once, so
    quantiles read from it are off by at most one bin width (at most 2·max/bins).
    """

    def __init__(self, d_sae: int, bins: int = FINE_BINS) -> None:
        assert bins & (bins - 1) == 0, "bins must be a power of two so widths can double exactly"
        self.d_sae, self.bins = d_sae, bins
        self.count = torch.zeros(d_sae, dtype=torch.long)
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae, dtype=torch.float32)
        self.hist = torch.zeros(d_sae, bins, dtype=torch.long)
        self.width = torch.zeros(d_sae, dtype=torch.float64)
        self.tokens = 0
        self.nonzeros = 0

    def update(self, latents: Int[Tensor, " nnz"], values: Float[Tensor, " nnz"], n_tokens: int) -> None:
        """Add the non-zero (latent, value) entries of `n_tokens` tokens."""
        self.tokens += n_tokens
        keep = values > 0
        latents, values = latents[keep].long(), values[keep].float()
        self.nonzeros += latents.numel()
        if latents.numel() == 0:
            return
        self.count.index_add_(0, latents, torch.ones_like(latents))
        self.total.index_add_(0, latents, values.double())
        self.max.scatter_reduce_(0, latents, values, reduce="amax")
        self._widen_()
        bin_ids = torch.floor(values.double() / self.width[latents]).long().clamp_(0, self.bins - 1)
        self.hist.view(-1).index_add_(0, latents * self.bins + bin_ids, torch.ones_like(bin_ids))

    def _widen_(self) -> None:
        """Give newly fired latents a width, and double widths until every maximum fits."""
        fresh = (self.width == 0) & (self.max > 0)
        self.width[fresh] = 2.0 * self.max[fresh].double() / self.bins
        span = self.width * self.bins
        grow = (self.max.double() >= span) & (self.width > 0)
        if not bool(grow.any()):
            return
        ids = grow.nonzero().flatten()
        doublings = torch.ceil(torch.log2(self.max[ids].double() / span[ids]) + 1e-12).long().clamp_(min=1)
        # A value exactly at span·2^d would still land past the end; one more doubling keeps it inside.
        doublings += (self.max[ids].double() >= span[ids] * 2.0 ** doublings.double()).long()
        for d in doublings.unique().tolist():
            sel = ids[doublings == d]
            self.hist[sel] = self._merge(self.hist[sel], d)
            self.width[sel] *= 2.0**d

    def _merge(self, hist: Int[Tensor, "n bins"], doublings: int) -> Int[Tensor, "n bins"]:
        group = 1 << doublings
        out = torch.zeros_like(hist)
        if group >= self.bins:
            out[:, 0] = hist.sum(1)
        else:
            out[:, : self.bins // group] = hist.view(hist.shape[0], self.bins // group, group).sum(-1)
        return out

    # ---------------------------------------------------------------------------- read-outs

    def frequency(self) -> Float[Tensor, " d_sae"]:
        return self.count.double().div(max(self.tokens, 1)).float()

    def mean(self) -> Float[Tensor, " d_sae"]:
        """Mean of the non-zero activations (0 for latents that never fired)."""
        return (self.total / self.count.clamp(min=1)).float()

    def quantiles(self, levels: tuple[float, ...]) -> Float[Tensor, "d_sae n_levels"]:
        """Approximate quantiles of each latent's non-zero activations (linear inside a histogram bin)."""
        cum = self.hist.cumsum(1).double()
        target = torch.tensor(levels, dtype=torch.float64)[None, :] * self.count.double()[:, None]
        j = torch.searchsorted(cum, target).clamp_(max=self.bins - 1)
        before = torch.where(j > 0, cum.gather(1, (j - 1).clamp(min=0)), torch.zeros_like(target))
        inside = self.hist.gather(1, j).double().clamp(min=1)
        frac = ((target - before) / inside).clamp(0, 1)
        values = (j.double() + frac) * self.width[:, None]
        return torch.minimum(values, self.max.double()[:, None]).float() * (self.count[:, None] > 0)

    def histogram(self, n_bins: int) -> Int[Tensor, "d_sae n_bins"]:
        """Counts over `n_bins` equal bins of [0, max]; each fine bin goes where its centre falls."""
        centres = (torch.arange(self.bins, dtype=torch.float64) + 0.5)[None, :] * self.width[:, None]
        out_width = (self.max.double() / n_bins).clamp(min=1e-30)[:, None]
        target = torch.floor(centres / out_width).long().clamp_(0, n_bins - 1)
        out = torch.zeros(self.d_sae, n_bins, dtype=torch.long)
        return out.scatter_add_(1, target, self.hist)


@dataclass
class Candidates:
    """At most one candidate example per (sequence, latent) of a block of sequences, ready to merge.

    Activation windows are cut only for the candidates that actually enter a keeper, from the block's
    dense code (token windows are cut later from the stored sequences: see `token_windows`)."""

    score: Float[Tensor, "batch d_sae"]
    """Ranking key; -inf where the latent has no candidate in that sequence."""
    value: Float[Tensor, "batch d_sae"]
    seq: Int[Tensor, " batch"]
    pos: Int[Tensor, "batch d_sae"]
    z: Float[Tensor, "batch seq d_sae"]
    before: int
    after: int

    def windows(self, b: Int[Tensor, " n"], latent: Int[Tensor, " n"]) -> Float[Tensor, "n window"]:
        """The latent's activations around each candidate (0 outside the sequence)."""
        seq = self.z.shape[1]
        idx = self.pos[b, latent][:, None] + torch.arange(-self.before, self.after + 1)
        valid = (idx >= 0) & (idx < seq)
        return self.z[b[:, None], idx.clamp(0, seq - 1), latent[:, None]].masked_fill(~valid, 0.0)


class ExampleKeeper:
    """The K highest-scoring examples of every latent, with activation windows, merged block by block.

    Memory: d_sae·K·(window·2 + 24) bytes, e.g. 16k latents x 95 examples x 21 tokens ≈ 100 MB."""

    def __init__(self, d_sae: int, k: int, window: int) -> None:
        self.k = k
        self.score = torch.full((d_sae, k), -math.inf)
        self.value = torch.zeros(d_sae, k)
        self.seq = torch.full((d_sae, k), -1, dtype=torch.long)
        self.pos = torch.full((d_sae, k), -1, dtype=torch.long)
        self.acts = torch.zeros(d_sae, k, window, dtype=torch.float16)

    def offer(self, cand: Candidates) -> None:
        # Only latents whose best new score beats their current K-th are touched: after the first batches
        # most latents are full of strong examples and the merge shrinks to a handful of rows.
        rows = (cand.score.max(0).values > self.score[:, -1]).nonzero().flatten()
        if rows.numel() == 0:
            return
        k = self.k
        order = torch.topk(torch.cat([self.score[rows], cand.score[:, rows].T], 1), k, dim=1).indices
        new = order >= k  # entries coming from this block
        r, j = new.nonzero(as_tuple=True)
        b, lat = order[r, j] - k, rows[r]
        # advanced indexing measured ~1.5x faster than gather with an expanded index at these sizes
        keep = (torch.arange(rows.numel())[:, None], order.clamp(max=k - 1))
        for name in ("score", "value", "seq", "pos", "acts"):
            getattr(self, name)[rows] = getattr(self, name)[rows][keep]
        self.score[lat, j] = cand.score[b, lat]
        self.value[lat, j] = cand.value[b, lat]
        self.seq[lat, j] = cand.seq[b]
        self.pos[lat, j] = cand.pos[b, lat]
        self.acts[lat, j] = cand.windows(b, lat).clamp(max=FP16_MAX).to(torch.float16)

    def seq_ids(self) -> Int[Tensor, "d_sae k"]:
        """Sequence id of every slot, −1 for empty ones (slots may hold leftovers of -inf candidates)."""
        return self.seq.masked_fill(~torch.isfinite(self.score), -1)


def token_windows(
    sequences: Int[Tensor, "n seq"],
    seq_ids: Int[Tensor, "d_sae k"],
    pos: Int[Tensor, "d_sae k"],
    before: int,
    after: int,
) -> Int[Tensor, "d_sae k window"]:
    """Token ids around each (sequence, position); −1 outside the sequence and for empty slots (seq −1)."""
    length = sequences.shape[1]
    idx = pos.long()[..., None] + torch.arange(-before, after + 1)
    valid = (idx >= 0) & (idx < length) & (seq_ids[..., None] >= 0)
    toks = sequences[seq_ids.long().clamp(min=0)[..., None], idx.clamp(0, length - 1)]
    return toks.to(torch.int32).masked_fill(~valid, -1)
