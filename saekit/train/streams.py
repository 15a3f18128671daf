"""One activation stream for several hook points: the rows of every hook in the same order, read once.

A multi-SAE run (`saekit.train.multi`) reads each window of the cache once for all its SAEs, and a live run
does one model forward per batch for all its hook points. Both streams yield one `Batch` whose columns are
the hook points side by side (`acts [B, Σ d_in]`); `columns(batch, hook)` cuts out one hook's rows.

Same order as a single-hook run: `MultiHookReader` is the shuffled reader with every window loaded from
each hook's cache. Its permutations depend only on (seed, epoch, window) and the shard layout, and caches
written by one `saekit collect` share that layout, so hook h's columns are exactly the batches a
`ShuffledReader` over h alone would yield (checked: different layouts are refused). `MultiHookLiveStream`
captures all hook points in one forward and shuffles their rows with one permutation, exactly as a
single-hook `LiveStream` shuffles its own.

    stream = MultiHookReader([open_cache(root, h) for h in hooks], batch_size, seed=0, buffer_tokens=...)
    batch = next(iter(stream)); x_h = columns(batch, hooks[1], stream.slices)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.activations import ActivationCache, LiveStream, ShuffledReader
from saekit.activations.rows import check_finite, keep_mask, model_seam, rows_from_capture
from saekit.errors import DataError
from saekit.types import Batch


def column_slices(hooks: list[str], widths: dict[str, int]) -> dict[str, slice]:
    """Where each hook's d_in columns sit in the side-by-side batch."""
    slices, start = {}, 0
    for hook in hooks:
        slices[hook] = slice(start, start + widths[hook])
        start += widths[hook]
    return slices


def columns(batch: Batch, hook: str, slices: dict[str, slice]) -> Batch:
    """One hook's rows of a side-by-side batch (contiguous, as a single-hook stream yields them)."""
    cut = slices[hook]
    if len(slices) == 1:
        return batch
    grads = None if batch.grads is None else batch.grads[:, cut].contiguous()
    return Batch(acts=batch.acts[:, cut].contiguous(), grads=grads, token_ids=batch.token_ids)


class MultiHookReader(ShuffledReader):
    """The shuffled reader over several hook points' caches of one collection (same shard layout).

    `shard_loads` counts shard files read (one per hook per shard per epoch; a benchmark reports it)."""

    def __init__(self, caches: list[ActivationCache], batch_size: int, **keys: Any) -> None:
        super().__init__(caches[0], batch_size, **keys)
        first = caches[0]
        for cache in caches[1:]:
            same = (cache.shard_sizes, cache.has_grads) == (first.shard_sizes, first.has_grads)
            if not same:
                raise DataError(
                    f"hook points {first.hookpoint} and {cache.hookpoint} have caches of different layouts "
                    f"({first.directory}, {cache.directory}): one stream needs the hook points of one "
                    "`saekit collect` run (list them all in its hookpoints), or train them separately"
                )
        self.caches = caches
        self.hooks = [c.hookpoint for c in caches]
        self.slices = column_slices(self.hooks, {c.hookpoint: c.d_in for c in caches})
        self.shard_loads = 0

    def _load_window(self, window: Any) -> dict[str, Tensor]:
        parts = []
        for cache in self.caches:
            self.cache = cache  # the single-hook loader reads self.cache
            try:
                parts.append(super()._load_window(window))
            finally:
                self.cache = self.caches[0]
            self.shard_loads += len(window.shards)
        if len(parts) == 1:
            return parts[0]
        merged = {
            name: torch.cat([p[name] for p in parts], dim=1) for name in ("acts", "grads") if name in parts[0]
        }
        merged["token_ids"] = parts[0]["token_ids"]
        return merged


class MultiHookLiveStream(LiveStream):
    """The live stream with every hook point captured in one forward, rows side by side."""

    def __init__(self, cfg: Any, hooks: list[str], batch_size: int, model: Any, **keys: Any) -> None:
        super().__init__(cfg, hooks[0], batch_size, model=model, **keys)
        model_seam().validate_hookpoints(self.model, hooks)
        self.hooks = hooks
        self.slices = column_slices(hooks, model_seam().hook_widths(self.model, hooks))
        self.shard_loads = 0  # nothing is read from disk

    def _rows_of(self, seqs: Any) -> dict[str, Tensor]:
        keep, _ = keep_mask(seqs.tokens, self.model, drop_last=self.cfg.capture_grads)
        cap = model_seam().capture(
            self.model,
            seqs.tokens,
            self.hooks,
            with_grads=self.cfg.capture_grads,
            autocast_bf16=self.cfg.autocast_bf16,
        )
        blocks = []
        for hook in self.hooks:
            grads = cap.grads[hook] if self.cfg.capture_grads else None
            block = rows_from_capture(seqs, keep, cap.acts[hook], grads)
            block.acts = block.acts.to(getattr(torch, self.cfg.dtype))  # as a cache would store them
            check_finite(block, hook)
            blocks.append(block)
        rows = {"acts": torch.cat([b.acts for b in blocks], dim=1), "token_ids": blocks[0].token_ids}
        if blocks[0].grads is not None:
            rows["grads"] = torch.cat([b.grads for b in blocks], dim=1)
        return rows


class HookView:
    """One hook point's view of the shared stream's position, as that hook's own single-hook stream would
    save it (a cache reader's state names its cache), so each SAE's checkpoint resumes a plain run too.

    `own` is a single-hook stream over the same data, never iterated: it only checks and spells states."""

    def __init__(self, shared: Any, own: Any) -> None:
        self.shared, self.own = shared, own

    def __iter__(self):
        return iter(())  # the group's loop reads the shared stream, never a view

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.shared.state_dict())
        if "cache_id" in state:
            state["cache_id"] = self.own.state_dict()["cache_id"]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.own.load_state_dict(state)  # refuses a state of another cache, with the fix
        shared = dict(state)
        if "cache_id" in shared:
            shared["cache_id"] = self.shared.state_dict()["cache_id"]
        self.shared.load_state_dict(shared)
