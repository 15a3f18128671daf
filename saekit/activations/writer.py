"""Writing the activation cache of one hook point: fixed-size atomic shards plus a manifest after each.

Rows are buffered and cut into shards of exactly `shard_tokens` rows (the last may be shorter). Each shard
is written to a temporary name, fsynced and renamed (`saekit.io.atomic_path`), then the manifest is
rewritten atomically, so after a crash the manifest lists only whole, hashed shards and a resumed
collection continues at the first missing one.

With `background = True` (what `collect` sets), shards are written by one background thread shared by all
writers of the process (so the model's next forward pass runs while a shard is hashed and fsynced), in
exactly the order they were cut. A writer keeps
at most one shard in flight (bounded memory); an error in the thread is raised in the caller's thread by
the writer's next `add` or `finish`, and `finish` returns only once everything is on disk.

Normalisation statistics are accumulated in fp64 per shard (on the stored values), so a resumed cache gets
bit-identical statistics.

    writer = CacheWriter.create(out_dir / hook, header, shard_tokens=65_536, dtype="float32")
    writer.add(acts, token_ids, seq_ids, positions)        # any number of times
    writer.finish(num_sequences=..., next_sequence=..., excluded={...})
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from saekit.activations.cache import FORMAT_VERSION, MANIFEST_NAME, ActivationCache, read_manifest, shard_name
from saekit.errors import CacheError, as_resource_error
from saekit.io import atomic_path, atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

# Rows per fp64 chunk when accumulating statistics: bounds the temporary fp64 copy (~8k x d_in x 8 bytes).
_STATS_CHUNK = 8192
# Permissions of an ordinary new file under the process umask (read once: os.umask can only be read by
# setting it).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def _save_shard(tensors: dict[str, Tensor], tmp: Path) -> None:
    """`save_file`, whose OS failures (a full disk) arrive as text in a SafetensorError: re-raised as the
    one-line ResourceError (the manifest still lists only whole shards, so a re-run resumes)."""
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    except SafetensorError as err:
        resource = as_resource_error(err)
        if resource is None:
            raise
        raise resource from err


class NormStats:
    """Running fp64 sums over rows: ||x||, ||x||^2 and x itself (for the per-dimension mean)."""

    def __init__(self, d_in: int) -> None:
        self.rows = 0
        self.sum_norm = torch.zeros((), dtype=torch.float64)
        self.sum_sq_norm = torch.zeros((), dtype=torch.float64)
        self.sum = torch.zeros(d_in, dtype=torch.float64)

    def update(self, acts: Float[Tensor, "n d_in"]) -> None:
        for start in range(0, acts.shape[0], _STATS_CHUNK):
            chunk = acts[start : start + _STATS_CHUNK].double()
            sq = chunk.square().sum(dim=1)
            self.sum_sq_norm += sq.sum()
            self.sum_norm += sq.sqrt().sum()
            self.sum += chunk.sum(dim=0)
        self.rows += acts.shape[0]

    def to_json(self) -> dict[str, Any]:
        n = max(self.rows, 1)
        return {
            "rows": self.rows,
            "mean_norm": (self.sum_norm / n).item(),
            "mean_squared_norm": (self.sum_sq_norm / n).item(),
            "mean": (self.sum / n).tolist(),
        }


def grads_dtype_for(dtype: str) -> str:
    """fp16 gradients underflow (algorithms.md §5.3), so they are kept in fp32 when acts are fp16."""
    return "float32" if dtype == "float16" else dtype


_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def _shard_thread() -> ThreadPoolExecutor:
    """The process-wide writer thread: one worker, so shards land in the order they were submitted."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saekit-shard-writer")
        return _EXECUTOR


class CacheWriter:
    """Appends rows to the cache of one hook point. Use `create` for a new cache, `resume` to continue."""

    def __init__(self, directory: Path, manifest: dict[str, Any], stats: NormStats) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self.stats = stats
        self._pending: list[dict[str, Tensor]] = []
        self._pending_rows = 0
        self._in_flight: Future | None = None
        self.background = False
        """Write full shards on the shared writer thread (off: `add` returns once they are on disk)."""
        self._acts_dtype = getattr(torch, manifest["dtype"])
        self._grads_dtype = getattr(torch, manifest.get("grads_dtype") or grads_dtype_for(manifest["dtype"]))

    @classmethod
    def create(cls, directory: Path, header: dict[str, Any]) -> CacheWriter:
        """A new, empty cache. `header` holds the fixed manifest fields (see `collect._header`); nothing
        touches the disk until the first shard is complete."""
        manifest = {
            "format_version": FORMAT_VERSION,
            **header,
            "grads_dtype": grads_dtype_for(header["dtype"]),
            "num_tokens": 0,
            "num_sequences": None,
            "next_sequence": None,
            "excluded_positions": None,
            "shards": [],
            "norm_stats": None,
            "complete": False,
        }
        return cls(directory, manifest, NormStats(int(header["d_in"])))

    @classmethod
    def resume(cls, directory: Path) -> CacheWriter:
        """Reopen the cache in `directory`, re-hashing every shard and re-accumulating the statistics in the
        original order. From the first missing, truncated or corrupt shard on, shards are dropped from the
        manifest (and the cache marked incomplete) so collection re-generates them; an intact complete
        cache is returned unchanged."""
        manifest = read_manifest(directory)
        reader = ActivationCache(directory, manifest)
        stats = NormStats(reader.d_in)
        good = 0
        for index in range(reader.num_shards):
            try:
                acts = reader.load_shard(index)["acts"]
            except CacheError as err:
                logger.warning("%s -- re-collecting from shard %d on", err, index)
                break
            stats.update(acts)
            good += 1
        if good < reader.num_shards:
            manifest["shards"] = manifest["shards"][:good]
            manifest["num_tokens"] = sum(int(entry["tokens"]) for entry in manifest["shards"])
            manifest.update(complete=False, num_sequences=None, next_sequence=None, excluded_positions=None)
        writer = cls(directory, manifest, stats)
        if not manifest["complete"]:
            writer._remove_stale_temporaries()
            logger.info("resuming %s after %d shards (%d tokens)", directory, good, writer.rows_written)
        return writer

    @property
    def rows_written(self) -> int:
        """Rows in shards already on disk (buffered rows not included)."""
        return int(self.manifest["num_tokens"])

    @property
    def shard_tokens(self) -> int:
        return int(self.manifest["shard_tokens"])

    def add(
        self,
        acts: Float[Tensor, "n d_in"],
        token_ids: Int[Tensor, " n"],
        seq_ids: Int[Tensor, " n"],
        positions: Int[Tensor, " n"],
        grads: Float[Tensor, "n d_in"] | None = None,
    ) -> None:
        """Buffer rows (cast to the storage dtype); write every shard that fills up (in the background).
        Rows already in the storage dtype on CPU are kept by reference, not copied: do not modify them
        after the call."""
        if self._in_flight is not None and self._in_flight.done():
            self._wait()  # a failed background write stops the collection at the next batch
        if self.manifest["complete"]:
            raise CacheError(f"{self.directory} is complete; open a new out_dir to collect more")
        n, d_in = acts.shape[0], int(self.manifest["d_in"])
        if acts.shape != (n, d_in) or any(t.shape != (n,) for t in (token_ids, seq_ids, positions)):
            raise ValueError(f"rows must be acts [n, {d_in}] with [n] ids; got {tuple(acts.shape)}")
        if (grads is not None) != bool(self.manifest["has_grads"]):
            raise ValueError(
                f"this cache has has_grads={self.manifest['has_grads']}; grads given: {grads is not None}"
            )
        row = {
            "acts": acts.detach().to("cpu", self._acts_dtype),
            "token_ids": token_ids.detach().to("cpu", torch.int64),
            "seq_ids": seq_ids.detach().to("cpu", torch.int64),
            "positions": positions.detach().to("cpu", torch.int64),
        }
        if grads is not None:
            row["grads"] = grads.detach().to("cpu", self._grads_dtype)
        self._pending.append(row)
        self._pending_rows += n
        while self._pending_rows >= self.shard_tokens:
            self._submit_shard(self._take(self.shard_tokens))

    def finish(self, *, num_sequences: int, next_sequence: int, excluded: dict[str, int]) -> None:
        """Write the remaining rows as a last (shorter) shard and mark the cache complete."""
        self._wait()
        if self._pending_rows:
            self._write_shard(self._take(self._pending_rows))
        self.manifest["num_sequences"] = num_sequences
        self.manifest["next_sequence"] = next_sequence
        self.manifest["excluded_positions"] = dict(excluded)
        self.manifest["complete"] = True
        self._write_manifest()
        logger.info(
            "cache %s complete: %d tokens in %d shards",
            self.directory,
            self.rows_written,
            len(self.manifest["shards"]),
        )

    # ------------------------------------------------------------------------------ internals
    def _submit_shard(self, tensors: dict[str, Tensor]) -> None:
        """Hand a cut shard to the writer thread, after this writer's previous one is on disk."""
        self._wait()
        if self.background:
            self._in_flight = _shard_thread().submit(self._write_shard, tensors)
        else:
            self._write_shard(tensors)

    def _wait(self) -> None:
        """Block until this writer's shard in flight is written; its error (if any) is raised here."""
        future, self._in_flight = self._in_flight, None
        if future is not None:
            future.result()

    def _take(self, n: int) -> dict[str, Tensor]:
        """Pop the first n buffered rows as one tensor per name (no copy when one buffered block holds
        exactly the shard; the rows handed over are never written to again)."""
        if len(self._pending) == 1 and self._pending_rows == n:
            self._pending_rows = 0
            return {name: t.contiguous() for name, t in self._pending.pop().items()}
        merged = {name: torch.cat([p[name] for p in self._pending]) for name in self._pending[0]}
        head = {name: t[:n].contiguous() for name, t in merged.items()}
        rest = {name: t[n:] for name, t in merged.items()}
        self._pending_rows -= n
        self._pending = [rest] if self._pending_rows else []
        return head

    def _write_shard(self, tensors: dict[str, Tensor]) -> None:
        index = len(self.manifest["shards"])
        path = self.directory / shard_name(index)
        with atomic_path(path) as tmp:
            # One metadata key only: safetensors orders metadata keys arbitrarily, and identical rows must
            # give identical bytes (and hashes) so a resumed cache is indistinguishable from a clean one.
            _save_shard(tensors, tmp)
            os.chmod(tmp, _FILE_MODE)  # safetensors creates 0600 files; caches are meant to be shared
            digest, size = sha256_file(tmp), tmp.stat().st_size
        rows = int(tensors["acts"].shape[0])
        self.manifest["shards"].append(
            {
                "file": path.name,
                "tokens": rows,
                "bytes": size,
                "sha256": digest,
                "first_seq_id": int(tensors["seq_ids"][0]),
            }
        )
        self.manifest["num_tokens"] += rows
        self.stats.update(tensors["acts"])
        self._write_manifest()
        logger.debug("wrote %s (%d rows)", path, rows)

    def _write_manifest(self) -> None:
        self.manifest["norm_stats"] = self.stats.to_json()
        atomic_write_json(self.directory / MANIFEST_NAME, self.manifest)

    def _remove_stale_temporaries(self) -> None:
        # A hard-killed writer leaves `.shard-XXXXX.safetensors.tmp-PID` behind; they are never listed in
        # the manifest and would only waste disk.
        for tmp in self.directory.glob(".*.tmp-*"):
            logger.info("removing leftover temporary file %s", tmp)
            tmp.unlink(missing_ok=True)
