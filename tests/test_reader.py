"""ShuffledReader: exactly-once epochs, seeded shuffling across shards, exact resume, acts/grads alignment."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from saekit.activations import CacheWriter, ShuffledReader, open_cache
from saekit.errors import CacheError, DataError

D_IN = 4
SHARD = 10


def _make_cache(directory, n: int = 47, grads: bool = True, nan_row: int | None = None):
    """Row r has acts[:, 0] = r (exact in fp32), grads = 2 * acts + 1 and token_ids = r % 97."""
    header = {
        "model_id": "synthetic",
        "hookpoint": "blocks.0.hook_resid_post",
        "d_in": D_IN,
        "dtype": "float32",
        "context_length": 8,
        "tokenizer_fingerprint": "tok",
        "corpus_fingerprint": "corpus",
        "collect_config": {},
        "shard_tokens": SHARD,
        "has_grads": grads,
        "first_sequence": 0,
    }
    writer = CacheWriter.create(directory, header)
    ids = torch.arange(n)
    acts = torch.stack([ids.float(), ids.float() % 3, -ids.float(), torch.ones(n)], dim=1)
    if nan_row is not None:
        acts[nan_row, 1] = float("nan")
    writer.add(acts, ids % 97, ids // 8, ids % 8, grads=2 * acts + 1 if grads else None)
    writer.finish(num_sequences=n // 8 + 1, next_sequence=n // 8 + 1, excluded={})
    return open_cache(directory)


def _ids(batches) -> torch.Tensor:
    return torch.cat([b.acts[:, 0] for b in batches]).long()


def test_every_row_exactly_once_per_epoch(tmp_path):
    cache = _make_cache(tmp_path)
    batches = list(ShuffledReader(cache, 8, seed=3, buffer_tokens=25, epochs=3))
    assert all(len(b) == 8 for b in batches[:-1])
    assert sum(len(b) for b in batches) == 3 * 47
    ids = _ids(batches)
    for epoch in range(3):
        chunk = ids[epoch * 47 : (epoch + 1) * 47]
        assert torch.equal(chunk.sort().values, torch.arange(47))
    # Different epochs use different orders, and the order is not the stored one.
    assert not torch.equal(ids[:47], ids[47:94])
    assert not torch.equal(ids[:47], torch.arange(47))


def test_batches_mix_rows_of_several_shards(tmp_path):
    cache = _make_cache(tmp_path)
    batches = list(ShuffledReader(cache, 8, seed=0, buffer_tokens=30, epochs=1))
    shards_per_batch = [len(set((_ids([b]) // SHARD).tolist())) for b in batches]
    assert max(shards_per_batch) >= 2


def test_window_buffer_is_bounded(tmp_path):
    cache = _make_cache(tmp_path)
    reader = ShuffledReader(cache, 8, seed=1, buffer_tokens=25)
    for epoch in range(4):
        windows = reader._windows(epoch)
        assert all(w.rows <= 25 for w in windows)
        assert sorted(s for w in windows for s in w.shards) == list(range(cache.num_shards))


def test_seed_determines_order(tmp_path):
    cache = _make_cache(tmp_path)
    first = lambda seed: _ids(list(ShuffledReader(cache, 8, seed=seed, buffer_tokens=25, epochs=1)))
    assert torch.equal(first(5), first(5))
    assert not torch.equal(first(5), first(6))


@pytest.mark.parametrize("consumed", [0, 2, 5, 6, 11])
def test_resume_equals_uninterrupted_continuation(tmp_path, consumed):
    cache = _make_cache(tmp_path)
    original = ShuffledReader(cache, 8, seed=7, buffer_tokens=25)
    stream = iter(original)
    for _ in range(consumed):
        next(stream)
    state = original.state_dict()
    expected = [next(stream) for _ in range(12)]  # crosses at least one epoch boundary (47 rows / epoch)
    restored = ShuffledReader(open_cache(tmp_path), 8, seed=999, buffer_tokens=1000)
    restored.load_state_dict(state)  # seed and buffer come from the state
    got = list(itertools.islice(restored, 12))
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a.acts, b.acts) and torch.equal(a.grads, b.grads)
        assert torch.equal(a.token_ids, b.token_ids)
    assert restored.state_dict() == original.state_dict()


def test_state_from_another_cache_is_refused(tmp_path):
    reader = ShuffledReader(_make_cache(tmp_path / "a"), 8, seed=0, buffer_tokens=25)
    other = ShuffledReader(_make_cache(tmp_path / "b", n=40), 8, seed=0, buffer_tokens=25)
    with pytest.raises(DataError, match="another cache"):
        other.load_state_dict(reader.state_dict())


def test_grads_stay_aligned_with_acts(tmp_path):
    cache = _make_cache(tmp_path)
    for batch in ShuffledReader(cache, 6, seed=2, buffer_tokens=25, epochs=2):
        assert batch.acts.dtype == torch.float32 and batch.grads.dtype == torch.float32
        torch.testing.assert_close(batch.grads, 2 * batch.acts + 1, rtol=0, atol=0)
        assert torch.equal(batch.token_ids, batch.acts[:, 0].long() % 97)


def test_without_grads_batches_have_none(tmp_path):
    cache = _make_cache(tmp_path, grads=False)
    batch = next(iter(ShuffledReader(cache, 8, seed=0, buffer_tokens=25)))
    assert batch.grads is None and batch.acts.shape == (8, D_IN)


def test_infinite_by_default_and_small_buffer_warns(tmp_path, caplog):
    cache = _make_cache(tmp_path)
    with caplog.at_level(logging.WARNING):
        reader = ShuffledReader(cache, 16, seed=0, buffer_tokens=4)
    assert "smaller than a shard" in caplog.text
    stream = iter(reader)
    batches = [next(stream) for _ in range(10)]  # 160 rows > 3 epochs of 47
    ids = _ids(batches)
    assert torch.equal(ids[:47].sort().values, torch.arange(47))
    assert reader.epoch == 160 // 47


def test_nan_rows_are_rejected_while_reading(tmp_path):
    cache = _make_cache(tmp_path, nan_row=13)
    with pytest.raises(DataError, match="shard-00001.*NaN"):
        list(ShuffledReader(cache, 8, seed=0, buffer_tokens=10, epochs=1))


def test_corrupt_shard_is_never_read(tmp_path):
    cache = _make_cache(tmp_path)
    shard = cache.shard_path(3)
    blob = bytearray(shard.read_bytes())
    blob[-1] ^= 0x01
    shard.write_bytes(bytes(blob))
    with pytest.raises(CacheError, match="shard-00003"):
        list(ShuffledReader(cache, 8, seed=0, buffer_tokens=25, epochs=1))
