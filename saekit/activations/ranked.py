"""Collection across the ranks of a `torchrun` job: disjoint shards of one cache, one manifest.

    torchrun --nproc-per-node 2 -m saekit collect configs/collect_embedded.yaml

Every rank walks the same sequence stream (tokenising is cheap next to the forward pass) and counts every
batch's kept rows, so all ranks agree on where `max_tokens` ends; rank r runs the model only on batches
i with i mod N = r, and writes them as an ordinary cache of its own in `<hook dir>/.rank-0000r-of-0000N/`
(resumable per rank exactly as a one-process cache is). When every rank is done, rank 0 links the parts'
shards into the hook directory (renumbered in stream order of their first sequence) and writes the one
manifest there atomically, then removes the parts. The cache holds exactly the rows one-process collection
stores, as a multiset; only the cut points of shards differ.

A crash before the manifest is written leaves the parts: re-running with the same number of ranks resumes
each rank from its last whole shard and merges again. A hook directory keeps its world size until it is
complete (a different one is refused with the fix).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from saekit.activations.cache import MANIFEST_NAME, read_manifest, shard_name
from saekit.errors import CacheError
from saekit.io import atomic_write_json
from saekit.ranks import Ranks

logger = logging.getLogger(__name__)

_PART = re.compile(r"^\.rank-(\d{5})-of-(\d{5})$")


def part_directory(hook_dir: Path, ranks: Ranks) -> Path:
    """Where rank `ranks.rank` keeps its own part of the cache of one hook point."""
    return Path(hook_dir) / f".rank-{ranks.rank:05d}-of-{ranks.world_size:05d}"


def check_parts(hook_dir: Path, ranks: Ranks) -> None:
    """Refuse to mix parts of a job with another number of ranks (one process included), and, under
    torchrun, a one-process collection that was interrupted in this directory (resume it as it started)."""
    hook_dir = Path(hook_dir)
    if not hook_dir.is_dir():
        return
    worlds = {int(m.group(2)) for e in hook_dir.iterdir() if (m := _PART.match(e.name))}
    other = sorted(worlds - {ranks.world_size})
    if other:
        raise CacheError(
            f"{hook_dir} holds an unfinished collection by {other[0]} ranks; resume it with `torchrun "
            f"--nproc-per-node {other[0]} -m saekit collect ...`, or delete {hook_dir} to start over"
        )
    manifest = hook_dir / MANIFEST_NAME
    if ranks.distributed and manifest.is_file() and not read_manifest(hook_dir).get("complete"):
        raise CacheError(
            f"{hook_dir} holds an unfinished one-process collection; resume it with plain `saekit collect "
            f"...` (no torchrun), or delete {hook_dir} to collect it across ranks"
        )


def merge_parts(hook_dir: Path, world_size: int) -> dict[str, Any]:
    """Rank 0, after every rank finished: the parts' shards become the hook directory's shards (hard links,
    a copy where linking is not possible), then the manifest is written once, atomically, then the parts
    are removed. Returns the manifest."""
    hook_dir = Path(hook_dir)
    parts = [hook_dir / f".rank-{r:05d}-of-{world_size:05d}" for r in range(world_size)]
    manifests = [read_manifest(part) for part in parts]
    unfinished = [str(p) for p, m in zip(parts, manifests, strict=True) if not m["complete"]]
    if unfinished:
        raise CacheError(f"cannot merge {hook_dir}: {unfinished[0]} is not complete; re-run the collection")
    entries = sorted(
        (entry["first_seq_id"], rank, index, entry)
        for rank, manifest in enumerate(manifests)
        for index, entry in enumerate(manifest["shards"])
    )
    shards = []
    for number, (_, rank, _, entry) in enumerate(entries):
        target = hook_dir / shard_name(number)
        _place(parts[rank] / entry["file"], target)
        shards.append({**entry, "file": target.name})
    first = manifests[0]
    merged = {
        **first,
        "shards": shards,
        "num_tokens": sum(int(m["num_tokens"]) for m in manifests),
        "norm_stats": merge_norm_stats([m["norm_stats"] for m in manifests]),
    }
    atomic_write_json(hook_dir / MANIFEST_NAME, merged)
    for part in parts:
        shutil.rmtree(part, ignore_errors=True)
    logger.info(
        "merged %d parts into %s: %d tokens, %d shards",
        world_size,
        hook_dir,
        merged["num_tokens"],
        len(shards),
    )
    return merged


def _place(source: Path, target: Path) -> None:
    """Put `source`'s bytes at `target` atomically (a leftover target of an earlier merge is replaced)."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def merge_norm_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Row-weighted means of the parts' statistics (the fields `NormStats.to_json` writes)."""
    rows = sum(int(s["rows"]) for s in stats)
    weight = [int(s["rows"]) / max(rows, 1) for s in stats]
    d_in = len(stats[0]["mean"])
    return {
        "rows": rows,
        "mean_norm": sum(w * s["mean_norm"] for w, s in zip(weight, stats, strict=True)),
        "mean_squared_norm": sum(w * s["mean_squared_norm"] for w, s in zip(weight, stats, strict=True)),
        "mean": [sum(w * s["mean"][i] for w, s in zip(weight, stats, strict=True)) for i in range(d_in)],
    }
