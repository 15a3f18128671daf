"""`collect`: run a model over a corpus once and cache activations at every requested hook point.

One forward pass per batch of sequences feeds all hook points. Special positions are dropped (and
counted), NaN/inf rows abort the run before the shard being built is written, and storage stops at
`max_tokens` rows per hook point.

Resume: sequence ids are deterministic and shards are cut at fixed row counts, so a re-run with the same
config regenerates the same sequence stream, skips the forward pass for batches whose rows are already in
complete shards, and discards rows before each hook point's resume row: no token is duplicated or lost.

    cfg = CollectConfig(model="tiny", hookpoints=("blocks.0.hook_resid_post",), out_dir="runs/cache")
    dirs = collect(cfg)                    # {"blocks.0.hook_resid_post": Path("runs/cache/blocks.0...")}
    cache = open_cache(dirs["blocks.0.hook_resid_post"])

Under `torchrun --nproc-per-node N` the ranks split the batches of sequences and write one cache together
(`saekit.activations.ranked`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import saekit
from saekit.activations.cache import MANIFEST_NAME, read_manifest
from saekit.activations.ranked import check_parts, merge_parts, part_directory
from saekit.activations.rows import (
    RowBlock,
    SequenceBatch,
    check_context_length,
    check_finite,
    corpora,
    iter_sequence_batches,
    keep_mask,
    model_seam,
    rows_from_capture,
)
from saekit.activations.writer import CacheWriter
from saekit.config import CollectConfig, to_dict
from saekit.config_checks import require_device
from saekit.errors import CacheError, CorpusError, HookpointError, check_directory_target
from saekit.ranks import Ranks, join_ranks

logger = logging.getLogger(__name__)

# Config fields that do not change the cached rows: where the cache lives, and which *other* hook points
# share the forward pass (each hook point has its own directory and manifest).
_CONFIG_KEYS_IGNORED = ("out_dir", "hookpoints")
# Manifest fields that must match for an existing cache to be resumed or reused.
_IDENTITY_KEYS = (
    "format_version",
    "model_id",
    "hookpoint",
    "d_in",
    "dtype",
    "context_length",
    "tokenizer_fingerprint",
    "corpus_fingerprint",
    "collect_config",
    "shard_tokens",
    "has_grads",
)


def collect(cfg: CollectConfig, model: Any = None, *, progress: bool = True) -> dict[str, Path]:
    """Cache activations for every hook point of `cfg`; return {hookpoint: cache directory}.

    Everything that can fail cheaply (hook names, an incompatible existing cache) fails before a file is
    written. A complete existing cache with the same identity is verified (sha256 of every shard) and
    returned; a damaged one is re-collected from its first bad shard on.
    """
    hookpoints = list(dict.fromkeys(cfg.hookpoints))
    for hook in hookpoints:
        if "/" in hook or hook.startswith("."):
            raise HookpointError(
                f"hook point {hook!r} cannot be a directory name; use a TransformerLens hook name"
            )
        check_directory_target(Path(cfg.out_dir) / hook, "out_dir")
    ranks = join_ranks(cfg.device)
    for hook in hookpoints:
        check_parts(Path(cfg.out_dir) / hook, ranks)
    if model is None:
        require_device(cfg.device, "device")
        model = model_seam().load_model(cfg.model, device=cfg.device)
    model_seam().validate_hookpoints(model, hookpoints)
    check_context_length(model, cfg.context_length)
    headers = _headers(cfg, model, hookpoints)
    if ranks.distributed:
        return _collect_across_ranks(cfg, model, headers, ranks, progress)
    writers = {hook: _open_writer(Path(cfg.out_dir) / hook, headers[hook]) for hook in hookpoints}
    dirs = {hook: w.directory for hook, w in writers.items()}
    if all(w.manifest["complete"] for w in writers.values()):
        logger.info("activation cache in %s is already complete; nothing to collect", cfg.out_dir)
        return dirs
    _Collector(cfg, model, writers, progress, ranks).run()
    return dirs


def _collect_across_ranks(
    cfg: CollectConfig, model: Any, headers: dict[str, dict[str, Any]], ranks: Ranks, progress: bool
) -> dict[str, Path]:
    """Each rank writes a cache of its own batches (resumable per rank); rank 0 merges them at the end."""
    dirs = {hook: Path(cfg.out_dir) / hook for hook in headers}
    todo = None
    if ranks.is_main:  # one rank verifies an existing cache; a damaged one fails every rank alike
        with ranks.lead():
            todo = [hook for hook, directory in dirs.items() if not _complete(directory, headers[hook])]
    else:
        ranks.follow()
    todo = ranks.from_main(todo)
    writers = {hook: _open_writer(part_directory(dirs[hook], ranks), headers[hook]) for hook in todo}
    if not all(w.manifest["complete"] for w in writers.values()):
        _Collector(cfg, model, writers, progress and ranks.is_main, ranks).run()
    ranks.barrier()  # every rank's part is complete
    if ranks.is_main:
        for hook in todo:
            merge_parts(dirs[hook], ranks.world_size)
    ranks.barrier()  # the one manifest exists before any rank returns
    if not todo:
        logger.info("activation cache in %s is already complete; nothing to collect", cfg.out_dir)
    return dirs


def _complete(directory: Path, header: dict[str, Any]) -> bool:
    """Whether `directory` already holds this complete cache (verified: a damaged one is refused, since
    repairing it is a one-process job)."""
    if not (directory / MANIFEST_NAME).is_file():
        return False
    if not _open_writer(directory, header).manifest["complete"]:
        raise CacheError(
            f"{directory} is damaged (a shard fails its hash); repair it with plain `saekit collect ...` "
            "(no torchrun), or delete it"
        )
    return True


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the tokenizer's full definition (vocabulary, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        payload = backend.to_str()
    elif hasattr(tokenizer, "get_vocab"):
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    else:
        payload = repr(tokenizer)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------- set-up


def _headers(cfg: CollectConfig, model: Any, hookpoints: list[str]) -> dict[str, dict[str, Any]]:
    """Fixed manifest fields per hook point. d_in comes from a 2-token probe forward pass, which also
    proves the capture path works before anything is written."""
    widths = model_seam().hook_widths(model, hookpoints)
    config = {k: v for k, v in to_dict(cfg).items() if k not in _CONFIG_KEYS_IGNORED}
    common = {
        "saekit_version": getattr(saekit, "__version__", "unknown"),
        "model_id": model_seam().model_id(model),
        "context_length": cfg.context_length,
        "tokenizer_fingerprint": tokenizer_fingerprint(model_seam().tokenizer_of(model)),
        "corpus_fingerprint": corpora().corpus_fingerprint(cfg.corpus, text_field=cfg.text_field),
        "corpus_split": corpora().corpus_split_info(cfg.corpus),  # embedded: held-out rule and sizes
        "collect_config": config,
        "shard_tokens": cfg.shard_tokens,
        "dtype": cfg.dtype,
        "has_grads": cfg.capture_grads,
        "first_sequence": cfg.skip_sequences,
    }
    return {hook: {**common, "hookpoint": hook, "d_in": widths[hook]} for hook in hookpoints}


def _open_writer(directory: Path, header: dict[str, Any]) -> CacheWriter:
    """A fresh writer, or the existing cache's (complete, or resumed after its last intact shard)."""
    if not (directory / MANIFEST_NAME).is_file():
        return CacheWriter.create(directory, header)
    existing = read_manifest(directory)
    expected = CacheWriter.create(directory, header).manifest
    diffs = [key for key in _IDENTITY_KEYS if existing.get(key) != expected.get(key)]
    if diffs:
        detail = ", ".join(f"{k}: cached {existing.get(k)!r} vs now {expected.get(k)!r}" for k in diffs[:3])
        raise CacheError(
            f"{directory} already holds a cache made with different settings ({detail}). Choose another "
            "out_dir, or delete the old cache to replace it"
        )
    # Complete caches are re-verified too: a damaged one is repaired from its first bad shard.
    return CacheWriter.resume(directory)


# ---------------------------------------------------------------------------------------- the loop


class _Collector:
    """The collection loop's state: counters shared by all hook points, writers, progress bar."""

    def __init__(
        self, cfg: CollectConfig, model: Any, writers: dict[str, CacheWriter], progress: bool, ranks: Ranks
    ) -> None:
        self.cfg, self.model, self.writers, self.ranks = cfg, model, writers, ranks
        self.stored = {hook: w.rows_written for hook, w in writers.items()}
        for writer in writers.values():
            writer.background = True  # the next forward runs while a shard is written (see writer.py)
        self.resume_row = min(self.stored.values())
        self.row_cursor = 0  # stream index of the next kept row, identical for every hook point
        self.own_cursor = 0  # the same, counting only this rank's batches (= row_cursor with one rank)
        self.batches_seen = 0
        self.next_sequence = cfg.skip_sequences
        self.excluded: dict[str, int] = {}
        self.forward_tokens = 0
        self.pbar = tqdm(
            total=cfg.max_tokens,
            initial=self.resume_row,
            unit="tok",
            unit_scale=True,
            file=sys.stderr,
            desc="collect",
            disable=not progress,
            dynamic_ncols=True,
        )

    def run(self) -> None:
        start = time.perf_counter()
        if self.resume_row:
            logger.info("resuming collection at token %d of %d", self.resume_row, self.cfg.max_tokens)
        try:
            for seqs in iter_sequence_batches(self.cfg, self.model, skip_sequences=self.cfg.skip_sequences):
                self._process(seqs)
                if self.row_cursor >= self.cfg.max_tokens:
                    break
        finally:
            self.pbar.close()
        if self.row_cursor == 0:
            raise CorpusError(f"corpus {self.cfg.corpus!r} yielded no storable tokens; check the corpus path")
        if self.row_cursor < self.cfg.max_tokens:
            logger.warning(
                "the corpus ran out after %d tokens (max_tokens=%d)", self.row_cursor, self.cfg.max_tokens
            )
        self._finish()
        self._log_throughput(time.perf_counter() - start)

    def _process(self, seqs: SequenceBatch) -> None:
        keep, excluded = keep_mask(seqs.tokens, self.model, drop_last=self.cfg.capture_grads)
        per_seq = keep.sum(dim=1)
        budget = self.cfg.max_tokens - self.row_cursor
        # Only sequences up to the one holding the last row within max_tokens are consumed.
        consumed = int((torch.cumsum(per_seq, 0) < budget).sum()) + 1
        consumed = min(consumed, len(seqs))
        if consumed < len(seqs):
            seqs = SequenceBatch(seqs.first_seq_id, seqs.tokens[:consumed])
            keep, excluded = keep_mask(seqs.tokens, self.model, drop_last=self.cfg.capture_grads)
        n_rows = min(int(keep.sum()), budget)
        mine = self.batches_seen % self.ranks.world_size == self.ranks.rank
        self.batches_seen += 1
        if mine and self.own_cursor + n_rows > self.resume_row:
            self._store(seqs, keep, n_rows)
        self.own_cursor += n_rows if mine else 0
        self.row_cursor += n_rows
        self.next_sequence = seqs.first_seq_id + len(seqs)
        for reason, count in excluded.items():
            self.excluded[reason] = self.excluded.get(reason, 0) + count

    def _store(self, seqs: SequenceBatch, keep: torch.Tensor, n_rows: int) -> None:
        cap = model_seam().capture(
            self.model,
            seqs.tokens,
            list(self.writers),
            with_grads=self.cfg.capture_grads,
            autocast_bf16=self.cfg.autocast_bf16,
        )
        self.forward_tokens += seqs.tokens.numel()
        dtype = getattr(torch, self.cfg.dtype)
        blocks: dict[str, RowBlock] = {}
        for hook in self.writers:
            grads = cap.grads[hook] if self.cfg.capture_grads else None
            block = rows_from_capture(seqs, keep, cap.acts[hook], grads).head(n_rows)
            block.acts = block.acts.to(dtype)  # check after the cast: fp16 overflow shows up as inf
            check_finite(block, hook)
            blocks[hook] = block
        # Every hook point is checked before any writer sees the batch, so a bad row leaves all caches at a
        # shard boundary.
        for hook, block in blocks.items():
            skip = self.stored[hook] - self.own_cursor
            if skip < len(block):
                b = block.slice(max(skip, 0), len(block))
                self.writers[hook].add(b.acts, b.token_ids, b.seq_ids, b.positions, b.grads)
                self.stored[hook] += len(b)
        self.pbar.update(max(0, self.own_cursor + n_rows - max(self.own_cursor, self.resume_row)))

    def _finish(self) -> None:
        consumed = self.next_sequence - self.cfg.skip_sequences
        for writer in self.writers.values():
            if not writer.manifest["complete"]:
                writer.finish(
                    num_sequences=consumed, next_sequence=self.next_sequence, excluded=self.excluded
                )

    def _log_throughput(self, seconds: float) -> None:
        new_rows = self.own_cursor - self.resume_row
        logger.info(
            "collected %d tokens per hook point (%d hook points, %d new) from %d sequences in %.1f s: "
            "%.0f stored tokens/s, %.0f model tokens/s; excluded positions %s",
            self.row_cursor,
            len(self.writers),
            new_rows,
            self.next_sequence - self.cfg.skip_sequences,
            seconds,
            new_rows / max(seconds, 1e-9),
            self.forward_tokens / max(seconds, 1e-9),
            self.excluded,
        )
