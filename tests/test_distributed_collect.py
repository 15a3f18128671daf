"""Collection across ranks, rank by rank in this process: per-rank resume, the merge, and refusals.

The torchrun job itself is tested in tests/test_distributed.py; here each rank's loop runs with an explicit
`Ranks(rank, 2)` (no process group), so a crash of one rank can be staged exactly.
"""

from pathlib import Path

import pytest
import torch
from fixtures_run import HOOK, collect_tiny_cache

from saekit.activations import open_cache
from saekit.activations.collect import _Collector, _headers, _open_writer
from saekit.activations.ranked import merge_parts, part_directory
from saekit.config import CollectConfig
from saekit.errors import CacheError
from saekit.models import load_model
from saekit.ranks import Ranks

TOKENS = 900


def cache_rows(directory: Path) -> dict[str, torch.Tensor]:
    """Every row of a cache, ordered by (sequence, position): a multiset comparison by equality."""
    cache = open_cache(directory)
    shards = [cache.load_shard(i) for i in range(cache.num_shards)]
    cat = {k: torch.cat([s[k] for s in shards]) for k in ("acts", "token_ids", "seq_ids", "positions")}
    order = torch.argsort(cat["seq_ids"] * 10_000 + cat["positions"])
    return {k: v[order] for k, v in cat.items()}


def run_rank(cfg: CollectConfig, model, rank: int) -> None:
    hook_dir = Path(cfg.out_dir) / HOOK
    header = _headers(cfg, model, [HOOK])[HOOK]
    writers = {HOOK: _open_writer(part_directory(hook_dir, Ranks(rank, 2)), header)}
    if not writers[HOOK].manifest["complete"]:
        _Collector(cfg, model, writers, False, Ranks(rank, 2)).run()


def test_a_rank_resumes_its_own_part_and_the_merge_equals_one_process(tmp_path, caplog):
    model = load_model("tiny")
    one = collect_tiny_cache(tmp_path / "one", max_tokens=TOKENS, shard_tokens=150, model=model) / HOOK
    cfg = CollectConfig(
        model="tiny",
        hookpoints=(HOOK,),
        context_length=32,
        max_tokens=TOKENS,
        batch_size=8,
        shard_tokens=150,
        out_dir=str(tmp_path / "two"),
    )
    hook_dir = tmp_path / "two" / HOOK
    for rank in (0, 1):
        run_rank(cfg, model, rank)
    # rank 1 "crashed" after its first shard: later shards gone, the manifest still lists them
    part = part_directory(hook_dir, Ranks(1, 2))
    later = sorted(part.glob("shard-*.safetensors"))[1:]
    assert later
    for shard in later:
        shard.unlink()
    with caplog.at_level("INFO", logger="saekit"):
        run_rank(cfg, model, 1)  # resumes from its last whole shard
    assert "after 1 shards" in caplog.text
    assert len(list(part.glob("shard-*.safetensors"))) == len(later) + 1  # the lost shards are back
    merged = merge_parts(hook_dir, 2)
    assert merged["complete"] and merged["num_tokens"] == TOKENS
    assert not part.exists()
    a, b = cache_rows(one), cache_rows(hook_dir)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_parts_of_another_world_size_are_refused(tmp_path):
    (tmp_path / "c" / HOOK / ".rank-00001-of-00003").mkdir(parents=True)
    with pytest.raises(CacheError, match="--nproc-per-node 3"):
        collect_tiny_cache(tmp_path / "c", max_tokens=100)
