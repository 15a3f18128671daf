"""The background shard writer: same bytes as writing in the caller's thread, errors raised in the caller."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.activations import CacheWriter, open_cache
from saekit.activations.cache import MANIFEST_NAME

D_IN = 4


def header() -> dict:
    return {
        "model_id": "synthetic",
        "hookpoint": "blocks.0.hook_resid_post",
        "d_in": D_IN,
        "dtype": "float32",
        "context_length": 8,
        "tokenizer_fingerprint": "tok",
        "corpus_fingerprint": "corpus",
        "collect_config": {},
        "shard_tokens": 8,
        "has_grads": False,
        "first_sequence": 0,
    }


def write(directory, *, background: bool, parts=(8, 3, 9, 8, 2)) -> CacheWriter:
    writer = CacheWriter.create(directory, header())
    writer.background = background
    start = 0
    for size in parts:
        ids = torch.arange(start, start + size)
        acts = (ids[:, None] * 3 + torch.arange(D_IN)).float()
        writer.add(acts, ids % 5, ids // 8, ids % 8)
        start += size
    writer.finish(num_sequences=4, next_sequence=4, excluded={})
    return writer


def test_background_writes_equal_foreground_writes(tmp_path):
    write(tmp_path / "fg", background=False)
    write(tmp_path / "bg", background=True)
    fg, bg = (json.loads((tmp_path / d / MANIFEST_NAME).read_text()) for d in ("fg", "bg"))
    assert bg == fg and len(bg["shards"]) == 4  # sha256 of every shard, sizes, statistics, order
    cache = open_cache(tmp_path / "bg")
    cache.verify()
    assert torch.equal(cache.load_shard(0)["acts"][:, 0], torch.arange(8).float() * 3)


def test_a_failed_background_write_is_raised_in_the_caller(tmp_path, monkeypatch):
    real = CacheWriter._write_shard
    calls = []

    def fail_second(self, tensors):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real(self, tensors)

    monkeypatch.setattr(CacheWriter, "_write_shard", fail_second)
    with pytest.raises(OSError, match="disk full"):
        write(tmp_path, background=True)
    cache = open_cache(tmp_path, allow_incomplete=True)
    assert cache.num_shards == 1 and not cache.complete  # what reached the disk is whole and resumable
    assert CacheWriter.resume(tmp_path).rows_written == 8
