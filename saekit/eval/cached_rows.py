"""Reading the tail of a training cache for evaluation: fp32 row chunks and their reconstruction stats.

The last `max_rows` rows of the cache were also seen in training, so numbers computed here measure fit,
not generalisation; `saekit.eval.evaluate` reports them under ``cached``.

    for x in iter_last_rows(cache, 8192):            # [<=ROW_CHUNK, d_in] fp32 chunks, cache order
        ...
    stats = cached_row_metrics(cache, sae, 8192, dense_threshold=0.1)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from saekit.eval.metrics import ReconstructionStats
from saekit.eval.splice import reconstruct_with_code

ROW_CHUNK = 4096
"""Cached rows scored per SAE call; bounds the dense [rows, d_sae] pre-activation memory."""


def iter_last_rows(cache: Any, max_rows: int, key: str = "acts") -> Iterator[Float[Tensor, "chunk d_in"]]:
    """fp32 chunks (in cache order) covering the last `max_rows` rows, one shard in memory at a time.
    `key="grads"` gives the stored gradients of the same rows, chunked identically."""
    sizes = [int(s) for s in cache.shard_sizes]
    start = max(0, sum(sizes) - max_rows)
    offset = 0
    for index, size in enumerate(sizes):
        if offset + size > start:
            acts = cache.load_shard(index)[key]
            for lo in range(max(0, start - offset), size, ROW_CHUNK):
                yield acts[lo : lo + ROW_CHUNK].float()
        offset += size


def cached_row_metrics(cache: Any, sae: Any, max_rows: int, dense_threshold: float) -> ReconstructionStats:
    """Reconstruction + sparsity over the last `max_rows` rows of the cache (rows seen in training)."""
    stats = ReconstructionStats(sae.d_sae, dense_threshold)
    device = next(iter(sae.parameters())).device
    for x in iter_last_rows(cache, max_rows):
        with torch.no_grad():
            x_hat, code = reconstruct_with_code(sae, x.to(device))
        stats.update(x, x_hat, code)
    return stats
