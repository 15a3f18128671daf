"""Live activations: the same `Batch` iterator as the cache reader, fed straight from the model (no disk).

Rows of each forward pass go into a shuffle buffer of `buffer_tokens` rows; when it is full it is
permuted and batches are emitted until it is half empty, so rows of many sequences mix and a remainder
mixes with the next fill. Positions are excluded exactly as `collect` excludes them. Rows are rounded to
`cfg.dtype` (as a cache would store them) and yielded as fp32. When the corpus runs out the stream
starts another pass over it (logged); `cfg.max_tokens` does not apply, the trainer decides when to stop.

Data parallelism (`rank`, `world_size`): every rank walks the same sequence stream and runs the model on
its contiguous part of each batch of sequences (`Ranks.share`), so each sequence of a pass is read by one
rank; `batch_size` is then the rank's part of the global batch. `sequences_consumed` counts the sequences
of all ranks, so the state has the same meaning everywhere (rank 0's is saved).

Resume is approximate by design: `state_dict()` records the sequences consumed; a restored stream
continues with the next sequence, and rows that were still in the buffer when the state was saved are
skipped (at most `buffer_tokens` rows).

    stream = LiveStream(cfg, "blocks.0.hook_resid_post", batch_size=1024)
    d_in = stream.d_in
    for batch in stream: ...
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from saekit.activations.rows import (
    SequenceBatch,
    check_context_length,
    check_finite,
    iter_sequence_batches,
    keep_mask,
    model_seam,
    rows_from_capture,
)
from saekit.activations.shuffle import derive_seed
from saekit.config import CollectConfig
from saekit.config_checks import require_device
from saekit.errors import CorpusError
from saekit.types import Batch

logger = logging.getLogger(__name__)


class LiveStream:
    """Infinite iterable of shuffled `Batch`es of one hook point, computed on the fly."""

    def __init__(
        self,
        cfg: CollectConfig,
        hookpoint: str,
        batch_size: int,
        model: Any = None,
        *,
        buffer_tokens: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.cfg, self.hookpoint, self.batch_size = cfg, hookpoint, batch_size
        if model is None:
            require_device(cfg.device, "live.device")
            model = model_seam().load_model(cfg.model, device=cfg.device)
        self.model = model
        model_seam().validate_hookpoints(self.model, [hookpoint])
        check_context_length(self.model, cfg.context_length, "live.context_length")
        # At least two batches so that every refill emits one; 8 by default for mixing across sequences.
        self.buffer_tokens = max(buffer_tokens or 8 * batch_size, 2 * batch_size)
        self.seed = cfg.seed
        self.rank, self.world_size = rank, world_size
        self.sequences_consumed = 0  # within the current pass, counted from cfg.skip_sequences
        self.passes = 0
        self.rows_yielded = 0
        self._d_in: int | None = None

    @property
    def d_in(self) -> int:
        if self._d_in is None:
            self._d_in = model_seam().hook_widths(self.model, [self.hookpoint])[self.hookpoint]
        return self._d_in

    def state_dict(self) -> dict[str, Any]:
        return {
            "sequences_consumed": self.sequences_consumed,
            "passes": self.passes,
            "rows_yielded": self.rows_yielded,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sequences_consumed = int(state["sequences_consumed"])
        self.passes = int(state["passes"])
        self.rows_yielded = int(state["rows_yielded"])
        self.seed = int(state["seed"])

    def __iter__(self) -> Iterator[Batch]:
        # The shuffle generator depends on where the stream starts, so a restored stream is reproducible.
        rng = torch.Generator().manual_seed(derive_seed(self.seed, self.passes, self.sequences_consumed))
        buffer: list[dict[str, Tensor]] = []
        buffered = 0
        for rows in self._rows():
            buffer.append(rows)
            buffered += rows["acts"].shape[0]
            if buffered < self.buffer_tokens:
                continue
            merged = {k: torch.cat([b[k] for b in buffer]) for k in buffer[0]}
            perm = torch.randperm(buffered, generator=rng)
            merged = {k: t[perm] for k, t in merged.items()}
            n_emit = (buffered - self.buffer_tokens // 2) // self.batch_size
            for i in range(n_emit):
                yield self._batch(merged, i * self.batch_size, (i + 1) * self.batch_size)
            kept = n_emit * self.batch_size
            buffer = [{k: t[kept:] for k, t in merged.items()}]
            buffered -= kept

    def _batch(self, rows: dict[str, Tensor], start: int, stop: int) -> Batch:
        self.rows_yielded += stop - start
        grads = rows.get("grads")
        return Batch(
            acts=rows["acts"][start:stop].float(),
            grads=None if grads is None else grads[start:stop].float(),
            token_ids=rows["token_ids"][start:stop],
        )

    def _rows_of(self, seqs: SequenceBatch) -> dict[str, Tensor]:
        keep, _ = keep_mask(seqs.tokens, self.model, drop_last=self.cfg.capture_grads)
        cap = model_seam().capture(
            self.model,
            seqs.tokens,
            [self.hookpoint],
            with_grads=self.cfg.capture_grads,
            autocast_bf16=self.cfg.autocast_bf16,
        )
        grads = cap.grads[self.hookpoint] if self.cfg.capture_grads else None
        block = rows_from_capture(seqs, keep, cap.acts[self.hookpoint], grads)
        block.acts = block.acts.to(getattr(torch, self.cfg.dtype))  # as a cache would store them
        check_finite(block, self.hookpoint)
        rows = {"acts": block.acts, "token_ids": block.token_ids}
        if block.grads is not None:
            rows["grads"] = block.grads
        return rows

    def _my_part(self, seqs: SequenceBatch) -> SequenceBatch:
        """This rank's contiguous sequences of a batch (all of them with one rank)."""
        if self.world_size == 1:
            return seqs
        lo = len(seqs) * self.rank // self.world_size
        hi = len(seqs) * (self.rank + 1) // self.world_size
        return SequenceBatch(seqs.first_seq_id + lo, seqs.tokens[lo:hi])

    def _rows(self) -> Iterator[dict[str, Tensor]]:
        """Rows of each forward pass, cycling over the corpus; advances `sequences_consumed`."""
        while True:
            produced, fresh = False, self.sequences_consumed == 0
            skip = self.cfg.skip_sequences + self.sequences_consumed
            try:
                for seqs in iter_sequence_batches(self.cfg, self.model, skip_sequences=skip):
                    mine = self._my_part(seqs)
                    rows = self._rows_of(mine) if len(mine) else None
                    self.sequences_consumed += len(seqs)
                    if rows is None:
                        continue
                    produced = produced or rows["acts"].shape[0] > 0
                    yield rows
            except CorpusError:
                if fresh:
                    raise
                # A stream restored exactly at the end of the corpus: chunking finds nothing left to skip to.
            if fresh and not produced:
                raise CorpusError(f"corpus {self.cfg.corpus!r} yielded no usable tokens for live streaming")
            self.passes += 1
            logger.info(
                "live stream: corpus pass %d done after %d sequences; starting over",
                self.passes,
                self.sequences_consumed,
            )
            self.sequences_consumed = 0
