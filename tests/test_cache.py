"""Cache writer and reader on synthetic rows: shard cutting, manifest, integrity checks, writer resume."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.activations import ActivationCache, CacheWriter, open_cache
from saekit.activations.cache import MANIFEST_NAME, list_hookpoints
from saekit.errors import CacheError

D_IN = 5


def _header(hookpoint: str = "blocks.0.hook_resid_post", dtype: str = "float32", grads: bool = False) -> dict:
    return {
        "model_id": "synthetic",
        "hookpoint": hookpoint,
        "d_in": D_IN,
        "dtype": dtype,
        "context_length": 8,
        "tokenizer_fingerprint": "tok",
        "corpus_fingerprint": "corpus",
        "collect_config": {},
        "shard_tokens": 8,
        "has_grads": grads,
        "first_sequence": 0,
    }


def _rows(n: int, start: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.arange(start, start + n)
    # Exact small numbers from the row id alone, so a prefix of _rows(30) equals _rows(21) bit for bit.
    acts = ((ids[:, None] * 7 + torch.arange(D_IN) * 3) % 13).float() * 0.5 - 2.0
    return {"acts": acts, "token_ids": ids % 11, "seq_ids": ids // 7, "positions": ids % 7 + 1}


def _write(directory, n: int, chunks=(5, 9, 1), dtype: str = "float32", finish: bool = True) -> dict:
    writer = CacheWriter.create(directory, _header(dtype=dtype))
    rows = _rows(n)
    start = 0
    sizes = list(chunks)
    while start < n:
        size = sizes.pop(0) if sizes else 4
        part = {k: v[start : start + size] for k, v in rows.items()}
        writer.add(part["acts"], part["token_ids"], part["seq_ids"], part["positions"])
        start += size
    if finish:
        writer.finish(num_sequences=4, next_sequence=4, excluded={"special": 4})
    return rows


def test_shards_have_exact_sizes_and_verify(tmp_path):
    rows = _write(tmp_path, 23)
    cache = open_cache(tmp_path)
    assert cache.shard_sizes == [8, 8, 7]
    assert cache.num_tokens == 23 and cache.d_in == D_IN and not cache.has_grads
    cache.verify()
    loaded = [cache.load_shard(i) for i in range(cache.num_shards)]
    for name in ("acts", "token_ids", "seq_ids", "positions"):
        torch.testing.assert_close(torch.cat([s[name] for s in loaded]), rows[name], rtol=0, atol=0)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["complete"] and manifest["num_sequences"] == 4
    assert [s["first_seq_id"] for s in manifest["shards"]] == [0, 8 // 7, 16 // 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [MANIFEST_NAME, "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    )


def test_norm_stats_are_fp64_statistics_of_the_stored_rows(tmp_path):
    _write(tmp_path, 23, dtype="bfloat16")
    cache = open_cache(tmp_path)
    stored = torch.cat([cache.load_shard(i)["acts"] for i in range(cache.num_shards)])
    assert stored.dtype == torch.bfloat16
    x = stored.double()
    stats = cache.norm_stats
    assert stats["rows"] == 23
    assert stats["mean_norm"] == pytest.approx(x.norm(dim=1).mean().item(), rel=1e-12)
    assert stats["mean_squared_norm"] == pytest.approx(x.square().sum(1).mean().item(), rel=1e-12)
    assert stats["mean"] == pytest.approx(x.mean(0).tolist(), rel=1e-12)


def test_rows_returns_first_rows_as_fp32_across_shards(tmp_path):
    rows = _write(tmp_path, 23, dtype="float16")
    cache = open_cache(tmp_path)
    first = cache.rows(11)
    assert first.dtype == torch.float32 and first.shape == (11, D_IN)
    torch.testing.assert_close(first, rows["acts"][:11].half().float(), rtol=0, atol=0)
    assert cache.rows(1000).shape == (23, D_IN)


def test_corrupt_byte_is_caught(tmp_path):
    _write(tmp_path, 23)
    shard = tmp_path / "shard-00001.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[-3] ^= 0xFF  # inside the tensor data: the file still parses, only the hash can tell
    shard.write_bytes(bytes(blob))
    cache = open_cache(tmp_path)  # same size: the stat check passes
    with pytest.raises(CacheError, match="shard-00001.*sha256.*collect"):
        cache.verify()
    with pytest.raises(CacheError, match="shard-00001"):
        cache.load_shard(1)
    cache.load_shard(0)  # the intact shards stay readable


def test_truncated_shard_is_caught(tmp_path):
    _write(tmp_path, 23)
    shard = tmp_path / "shard-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-20])
    with pytest.raises(CacheError, match="shard-00002.*truncated"):
        open_cache(tmp_path)
    cache = ActivationCache(tmp_path, json.loads((tmp_path / MANIFEST_NAME).read_text()))
    with pytest.raises(CacheError, match="shard-00002"):
        cache.load_shard(2)


def test_missing_shard_and_bad_manifest(tmp_path):
    _write(tmp_path, 23)
    (tmp_path / "shard-00000.safetensors").unlink()
    with pytest.raises(CacheError, match="shard-00000.*missing"):
        open_cache(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(CacheError, match="not valid JSON"):
        open_cache(tmp_path)


def test_newer_format_is_refused(tmp_path):
    _write(tmp_path, 9)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="upgrade"):
        open_cache(tmp_path)


def test_open_cache_resolves_hookpoints_under_a_root(tmp_path):
    with pytest.raises(CacheError, match="no activation cache"):
        open_cache(tmp_path)
    _write(tmp_path / "blocks.0.hook_resid_post", 9)
    assert open_cache(tmp_path).hookpoint == "blocks.0.hook_resid_post"
    writer = CacheWriter.create(tmp_path / "blocks.1.hook_mlp_out", _header("blocks.1.hook_mlp_out"))
    r = _rows(3)
    writer.add(r["acts"], r["token_ids"], r["seq_ids"], r["positions"])
    writer.finish(num_sequences=1, next_sequence=1, excluded={})
    assert list_hookpoints(tmp_path) == ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    with pytest.raises(CacheError, match="several hook points.*blocks.1.hook_mlp_out"):
        open_cache(tmp_path)
    assert open_cache(tmp_path, "blocks.1.hook_mlp_out").num_tokens == 3
    with pytest.raises(CacheError, match="blocks.7.hook_resid_post.*blocks.0"):
        open_cache(tmp_path, "blocks.7.hook_resid_post")


def test_incomplete_cache_needs_opt_in(tmp_path):
    _write(tmp_path, 20, finish=False)
    with pytest.raises(CacheError, match="incomplete.*resumes"):
        open_cache(tmp_path)
    cache = open_cache(tmp_path, allow_incomplete=True)
    assert cache.num_tokens == 16 and not cache.complete  # the 4 buffered rows never reached the disk


def test_writer_resume_matches_uninterrupted_writer(tmp_path):
    full = tmp_path / "full"
    _write(full, 30)
    part = tmp_path / "part"
    _write(part, 21, finish=False)  # two shards (16 rows) reach the disk; 5 buffered rows are lost
    (part / ".shard-00002.safetensors.tmp-123").write_bytes(b"half a shard")
    writer = CacheWriter.resume(part)
    assert writer.rows_written == 16
    assert not list(part.glob(".*.tmp-*"))
    rows = _rows(30)
    rest = {k: v[16:] for k, v in rows.items()}
    writer.add(rest["acts"], rest["token_ids"], rest["seq_ids"], rest["positions"])
    writer.finish(num_sequences=4, next_sequence=4, excluded={"special": 4})
    assert json.loads((part / MANIFEST_NAME).read_text()) == json.loads((full / MANIFEST_NAME).read_text())


def test_writer_rejects_wrong_shapes_and_finished_caches(tmp_path):
    writer = CacheWriter.create(tmp_path, _header())
    r = _rows(4)
    with pytest.raises(ValueError, match="acts"):
        writer.add(r["acts"][:, :3], r["token_ids"], r["seq_ids"], r["positions"])
    with pytest.raises(ValueError, match="has_grads"):
        writer.add(r["acts"], r["token_ids"], r["seq_ids"], r["positions"], grads=r["acts"])
    writer.add(r["acts"], r["token_ids"], r["seq_ids"], r["positions"])
    writer.finish(num_sequences=1, next_sequence=1, excluded={})
    with pytest.raises(CacheError, match="complete"):
        writer.add(r["acts"], r["token_ids"], r["seq_ids"], r["positions"])
    reopened = CacheWriter.resume(tmp_path)  # an intact complete cache stays complete
    assert reopened.manifest["complete"] and reopened.rows_written == 4
    with pytest.raises(CacheError, match="complete"):
        reopened.add(r["acts"], r["token_ids"], r["seq_ids"], r["positions"])


def test_resume_drops_shards_from_the_first_damaged_one(tmp_path):
    _write(tmp_path, 30)
    shard = tmp_path / "shard-00001.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[-2] ^= 0x10
    shard.write_bytes(bytes(blob))
    writer = CacheWriter.resume(tmp_path)
    assert writer.rows_written == 8 and not writer.manifest["complete"]
    assert [s["file"] for s in writer.manifest["shards"]] == ["shard-00000.safetensors"]
    assert writer.stats.rows == 8
