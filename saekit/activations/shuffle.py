"""Token-level shuffled, seeded, exactly resumable batches from an activation cache.

Each epoch permutes the shard order, groups consecutive shards into *windows* of at most `buffer_tokens`
rows (always at least one shard), loads one window at a time and permutes all its rows: batches are drawn
uniformly without replacement from a buffer spanning several shards. Memory holds one window of
max(buffer_tokens, largest shard) rows in the storage dtype (two while a batch straddles windows) plus
one fp32 batch.

Every permutation is derived from (seed, epoch, window), never from earlier draws, so the reader's whole
state is one counter: rows delivered so far. Epochs are concatenated into one stream; a batch that does
not fit in what is left of an epoch is completed with the first rows of the next one (every batch is full
size; every row still appears exactly once in each epoch's `num_tokens` rows of the stream). With a finite
`epochs`, the final batch may be short.

Data parallelism: `batch_size` is the *global* batch. With `world_size` N, every rank computes the same
stream and keeps only its contiguous part of each batch (`Ranks.share`: rows [B·r/N, B·(r+1)/N)), so
the N ranks together see exactly the rows a single reader with batch B sees, each row of an epoch once
across ranks, and the state (rows delivered, global) is the same on every rank. Each rank still loads
whole windows (the shuffle spans shards), but only converts its own rows to fp32.

    reader = ShuffledReader(open_cache("runs/cache"), 4096, seed=0, buffer_tokens=262_144)
    for batch in reader: ...                 # Batch(acts fp32, grads fp32 or None, token_ids)
    state = reader.state_dict()              # later: reader.load_state_dict(state) continues exactly
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saekit.activations.cache import ActivationCache
from saekit.errors import DataError
from saekit.types import Batch

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


@dataclass
class _Window:
    """Shards loaded together and shuffled as one buffer; `start` is its first row within the epoch."""

    shards: list[int]
    start: int
    rows: int


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. seed, epoch, window) for a fresh torch.Generator."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ShuffledReader:
    """Iterable of shuffled `Batch`es over a cache; infinite by default (epochs=None)."""

    def __init__(
        self,
        cache: ActivationCache,
        batch_size: int,
        *,
        seed: int = 0,
        buffer_tokens: int = 262_144,
        epochs: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0 or buffer_tokens <= 0:
            raise ValueError(
                f"batch_size ({batch_size}) and buffer_tokens ({buffer_tokens}) must be positive"
            )
        if epochs is not None and epochs <= 0:
            raise ValueError(f"epochs must be positive or None (infinite), got {epochs}")
        if not 0 <= rank < world_size or batch_size < world_size:
            raise ValueError(
                f"rank {rank} of {world_size}: need 0 <= rank < world_size <= batch_size ({batch_size})"
            )
        if cache.num_tokens == 0:
            raise DataError(f"the cache at {cache.directory} holds no rows; re-run collect with more text")
        self.cache, self.batch_size, self.seed = cache, batch_size, seed
        self.buffer_tokens, self.epochs = buffer_tokens, epochs
        self.rank, self.world_size = rank, world_size
        self.rows_delivered = 0
        if buffer_tokens < max(cache.shard_sizes):
            logger.warning(
                "buffer_tokens=%d is smaller than a shard (%d rows): the buffer holds one whole shard at "
                "a time, so rows mix within a shard only",
                buffer_tokens,
                max(cache.shard_sizes),
            )

    @property
    def epoch(self) -> int:
        return self.rows_delivered // self.cache.num_tokens

    def __iter__(self) -> Iterator[Batch]:
        """Continue from the current position (a fresh reader starts at row 0 of epoch 0)."""
        pieces = self._pieces()
        pending: list[tuple[dict[str, Tensor], Tensor]] = []
        pending_rows = 0
        while True:
            while pending_rows < self.batch_size:
                piece = next(pieces, None)
                if piece is None:
                    break
                pending.append(piece)
                pending_rows += piece[1].numel()
            if pending_rows == 0:
                return
            take = min(self.batch_size, pending_rows)
            head, pending = _cut(pending, take)
            lo, hi = take * self.rank // self.world_size, take * (self.rank + 1) // self.world_size
            batch = _gather(_cut(_cut(head, hi)[0], lo)[1])
            pending_rows -= take
            # Advance before yielding so state_dict() taken after receiving a batch already counts it.
            self.rows_delivered += take
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "rows_delivered": self.rows_delivered,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "buffer_tokens": self.buffer_tokens,
            "num_tokens": self.cache.num_tokens,
            "cache_id": _cache_id(self.cache),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; the seed and buffer come from the state so the stream continues exactly."""
        if state.get("cache_id") != _cache_id(self.cache):
            raise DataError(
                f"reader state is for another cache ({state.get('num_tokens')} rows, id "
                f"{state.get('cache_id')}); {self.cache.directory} has {self.cache.num_tokens} rows, id "
                f"{_cache_id(self.cache)}. Resume with the cache the run was started on"
            )
        if state.get("batch_size") != self.batch_size:
            logger.warning(
                "reader batch size changed from %s to %d on resume", state.get("batch_size"), self.batch_size
            )
        self.seed = int(state["seed"])
        self.buffer_tokens = int(state["buffer_tokens"])
        self.rows_delivered = int(state["rows_delivered"])

    # ------------------------------------------------------------------------------ internals
    def _windows(self, epoch: int) -> list[_Window]:
        order = torch.randperm(self.cache.num_shards, generator=_generator(self.seed, epoch, 0)).tolist()
        sizes = self.cache.shard_sizes
        windows: list[_Window] = []
        start = 0
        for shard in order:
            last = windows[-1] if windows else None
            if last is not None and last.rows + sizes[shard] <= self.buffer_tokens:
                last.shards.append(shard)
                last.rows += sizes[shard]
            else:
                windows.append(_Window([shard], start, sizes[shard]))
            start += sizes[shard]
        return windows

    def _pieces(self) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Yield (window tensors, row indices) in stream order, starting at rows_delivered."""
        total = self.cache.num_tokens
        end = None if self.epochs is None else self.epochs * total
        position = self.rows_delivered
        while end is None or position < end:
            epoch, offset = divmod(position, total)
            for number, window in enumerate(self._windows(epoch)):
                if window.start + window.rows <= offset:
                    continue  # already delivered before the resume point
                tensors = self._load_window(window)
                perm = torch.randperm(window.rows, generator=_generator(self.seed, epoch, number + 1))
                yield tensors, perm[max(offset - window.start, 0) :]
                del tensors  # drop this window before loading the next (peak memory)
            position = (epoch + 1) * total

    def _load_window(self, window: _Window) -> dict[str, Tensor]:
        parts = []
        for index in window.shards:
            shard = self.cache.load_shard(index)
            _check_finite(shard, self.cache.shard_path(index))
            parts.append(shard)
        names = ["acts", "token_ids"] + (["grads"] if self.cache.has_grads else [])
        if len(parts) == 1:
            return {name: parts[0][name] for name in names}
        return {name: torch.cat([p[name] for p in parts]) for name in names}


def _cache_id(cache: ActivationCache) -> str:
    joined = "".join(entry["sha256"] for entry in cache.manifest["shards"])
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def _cut(
    pieces: list[tuple[dict[str, Tensor], Tensor]], take: int
) -> tuple[list[tuple[dict[str, Tensor], Tensor]], list[tuple[dict[str, Tensor], Tensor]]]:
    """Split pieces (window tensors, row indices) into the first `take` rows and the rest."""
    head: list[tuple[dict[str, Tensor], Tensor]] = []
    rest = list(pieces)
    while take > 0 and rest:
        tensors, idx = rest.pop(0)
        head.append((tensors, idx[:take]))
        if idx.numel() > take:
            rest.insert(0, (tensors, idx[take:]))
        take -= min(take, idx.numel())
    return head, rest


def _gather(pieces: list[tuple[dict[str, Tensor], Tensor]]) -> Batch:
    """One fp32 Batch from the rows the pieces index."""
    acts, grads, token_ids = [], [], []
    for tensors, idx in pieces:
        acts.append(tensors["acts"][idx].float())
        token_ids.append(tensors["token_ids"][idx])
        if "grads" in tensors:
            grads.append(tensors["grads"][idx].float())
    cat = lambda ts: ts[0] if len(ts) == 1 else torch.cat(ts)
    return Batch(acts=cat(acts), grads=cat(grads) if grads else None, token_ids=cat(token_ids))


def _check_finite(shard: dict[str, Tensor], path: Any) -> None:
    for name in ("acts", "grads"):
        if name not in shard:
            continue
        bad = ~torch.isfinite(shard[name]).all(dim=1)
        if bad.any():
            raise DataError(
                f"shard {path} has {int(bad.sum())} rows with NaN/inf {name} (first: row "
                f"{int(bad.nonzero()[0])}); delete the cache and re-collect (collect now rejects such rows)"
            )
