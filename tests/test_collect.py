"""collect() and LiveStream on the tiny model: contents, resume after a crash, refusals, NaN rejection."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import saekit.models
from saekit.activations import CacheWriter, LiveStream, collect, open_cache
from saekit.config import CollectConfig
from saekit.data import chunk_tokens, embedded_documents, iter_texts
from saekit.errors import CacheError, DataError, HookpointError

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_mlp_out")


@pytest.fixture(scope="module")
def tiny():
    return saekit.models.load_model("tiny")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    docs = itertools.islice(embedded_documents(), 40)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


def _cfg(corpus: str, out, **overrides) -> CollectConfig:
    base = dict(
        model="tiny", hookpoints=HOOKS, corpus=corpus, context_length=32, max_tokens=1500,
        batch_size=8, shard_tokens=256, out_dir=str(out),
    )  # fmt: skip
    return CollectConfig(**{**base, **overrides})


def _all_rows(directory) -> dict[str, torch.Tensor]:
    cache = open_cache(directory)
    shards = [cache.load_shard(i) for i in range(cache.num_shards)]
    return {name: torch.cat([s[name] for s in shards]) for name in shards[0]}


def _manifest(directory) -> dict:
    return json.loads((directory / "manifest.json").read_text())


@pytest.fixture
def capture_calls(monkeypatch):
    """Count forward passes over real batches (the 1x2 probe excluded)."""
    calls = []
    real = saekit.models.capture

    def spy(model, tokens, hookpoints, **kw):
        if tokens.shape[1] > 2:
            calls.append(tokens.shape[0])
        return real(model, tokens, hookpoints, **kw)

    monkeypatch.setattr(saekit.models, "capture", spy)
    return calls


def test_collect_writes_a_verified_cache_of_non_special_rows(tmp_path, tiny, corpus):
    cfg = _cfg(corpus, tmp_path)
    dirs = collect(cfg, tiny, progress=False)
    assert set(dirs) == set(HOOKS)
    rows = {hook: _all_rows(dirs[hook]) for hook in HOOKS}
    for hook in HOOKS:
        cache = open_cache(tmp_path, hook)
        cache.verify()
        assert cache.num_tokens == 1500 and cache.shard_sizes == [256] * 5 + [220]
        assert cache.d_in == 64 and not cache.has_grads
        for name in ("token_ids", "seq_ids", "positions"):
            assert torch.equal(rows[hook][name], rows[HOOKS[0]][name])  # one pass feeds every hook
    r = rows[HOOKS[0]]
    specials = torch.tensor(saekit.models.special_token_ids(tiny))
    assert not torch.isin(r["token_ids"], specials).any()
    assert (r["positions"] >= 1).all() and (r["positions"] < 32).all()
    order = r["seq_ids"] * 32 + r["positions"]
    assert (order[1:] > order[:-1]).all()  # sequence-major, no duplicates
    manifest = _manifest(dirs[HOOKS[0]])
    assert manifest["complete"] and manifest["model_id"] == "tiny"
    assert manifest["next_sequence"] == int(r["seq_ids"][-1]) + 1 == manifest["num_sequences"]
    tok, bos = saekit.models.tokenizer_of(tiny), saekit.models.bos_token_id(tiny)
    seqs = torch.stack(
        list(chunk_tokens(iter_texts(corpus), tok, 32, bos_id=bos, max_sequences=r["seq_ids"][-1] + 1))
    )
    special = saekit.models.special_token_mask(seqs, tiny)
    assert manifest["excluded_positions"] == {"special": int(special.sum())}
    assert special[:, 0].all()  # every BOS among them


def test_cached_rows_equal_a_direct_capture(tmp_path, tiny, corpus):
    collect(_cfg(corpus, tmp_path, max_tokens=200), tiny, progress=False)
    tok = saekit.models.tokenizer_of(tiny)
    bos = saekit.models.bos_token_id(tiny)
    first = next(chunk_tokens(iter_texts(corpus), tok, 32, bos_id=bos))
    batch = torch.stack(list(itertools.islice(chunk_tokens(iter_texts(corpus), tok, 32, bos_id=bos), 7)))
    cap = saekit.models.capture(tiny, batch, list(HOOKS))
    for hook in HOOKS:
        r = _all_rows(tmp_path / hook)
        in_seq0 = r["seq_ids"] == 0
        keep = ~saekit.models.special_token_mask(first[None], tiny)[0]
        assert torch.equal(r["token_ids"][in_seq0], first[keep])
        torch.testing.assert_close(r["acts"][in_seq0], cap.acts[hook][0][keep], rtol=1e-5, atol=1e-6)


def test_resume_after_a_crash_equals_an_uninterrupted_collection(
    tmp_path, tiny, corpus, monkeypatch, capture_calls
):
    collect(_cfg(corpus, tmp_path / "clean"), tiny, progress=False)
    clean_calls = len(capture_calls)

    real_write = CacheWriter._write_shard
    writes = []

    def crash_after_five(self, tensors):
        if len(writes) == 5:  # hook 0 has 3 shards, hook 1 has 2: the hooks resume at different rows
            raise KeyboardInterrupt
        writes.append(self.directory.name)
        real_write(self, tensors)

    monkeypatch.setattr(CacheWriter, "_write_shard", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        collect(_cfg(corpus, tmp_path / "resumed"), tiny, progress=False)
    assert [open_cache(tmp_path / "resumed" / h, allow_incomplete=True).num_shards for h in HOOKS] == [3, 2]
    monkeypatch.setattr(CacheWriter, "_write_shard", real_write)
    del capture_calls[:]
    collect(_cfg(corpus, tmp_path / "resumed"), tiny, progress=False)
    assert 0 < len(capture_calls) < clean_calls  # batches inside complete shards were not re-run
    for hook in HOOKS:
        clean, resumed = tmp_path / "clean" / hook, tmp_path / "resumed" / hook
        assert _manifest(resumed) == _manifest(clean)  # sha256 of every shard included
        a, b = _all_rows(clean), _all_rows(resumed)
        for name in ("acts", "token_ids", "seq_ids", "positions"):
            assert torch.equal(a[name], b[name])


def test_complete_cache_is_returned_without_work(tmp_path, tiny, corpus, capture_calls):
    cfg = _cfg(corpus, tmp_path, max_tokens=300)
    collect(cfg, tiny, progress=False)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    del capture_calls[:]
    assert collect(cfg, tiny, progress=False) == {h: tmp_path / h for h in HOOKS}
    assert capture_calls == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_mismatched_existing_cache_is_refused(tmp_path, tiny, corpus):
    collect(_cfg(corpus, tmp_path, max_tokens=300), tiny, progress=False)
    before = _manifest(tmp_path / HOOKS[0])
    with pytest.raises(CacheError, match="dtype.*another out_dir.*delete"):
        collect(_cfg(corpus, tmp_path, max_tokens=300, dtype="float16"), tiny, progress=False)
    with pytest.raises(CacheError, match="max_tokens"):
        collect(_cfg(corpus, tmp_path, max_tokens=400), tiny, progress=False)
    assert _manifest(tmp_path / HOOKS[0]) == before


def test_unknown_hook_fails_before_any_file_is_written(tmp_path, tiny, corpus):
    out = tmp_path / "cache"
    with pytest.raises(HookpointError, match="blocks.1.hook_resid_pots"):
        collect(_cfg(corpus, out, hookpoints=(HOOKS[0], "blocks.1.hook_resid_pots")), tiny, progress=False)
    assert not out.exists()


def test_nan_activations_are_rejected_with_nothing_written(tmp_path, tiny, corpus, monkeypatch):
    real = saekit.models.capture

    def poisoned(model, tokens, hookpoints, **kw):
        cap = real(model, tokens, hookpoints, **kw)
        if tokens.shape[1] > 2:
            cap.acts[HOOKS[1]][2, 7, 3] = float("nan")
        return cap

    monkeypatch.setattr(saekit.models, "capture", poisoned)
    out = tmp_path / "cache"
    with pytest.raises(DataError, match=r"blocks.1.hook_mlp_out.*sequence 2, position 7"):
        collect(_cfg(corpus, out, shard_tokens=64), tiny, progress=False)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_gradients_are_stored_aligned_and_last_position_dropped(tmp_path, tiny, corpus):
    cfg = _cfg(corpus, tmp_path, hookpoints=(HOOKS[0],), max_tokens=400, capture_grads=True)
    collect(cfg, tiny, progress=False)
    cache = open_cache(tmp_path)
    assert cache.has_grads
    r = _all_rows(tmp_path / HOOKS[0])
    assert (r["positions"] < 31).all()
    assert torch.isfinite(r["grads"]).all() and (r["grads"].abs().sum(1) > 0).all()
    assert _manifest(tmp_path / HOOKS[0])["excluded_positions"]["last_no_label"] > 0
    tok, bos = saekit.models.tokenizer_of(tiny), saekit.models.bos_token_id(tiny)
    batch = torch.stack(list(itertools.islice(chunk_tokens(iter_texts(corpus), tok, 32, bos_id=bos), 8)))
    cap = saekit.models.capture(tiny, batch, [HOOKS[0]], with_grads=True)
    seq1 = r["seq_ids"] == 1
    torch.testing.assert_close(r["grads"][seq1], cap.grads[HOOKS[0]][1, r["positions"][seq1]])
    torch.testing.assert_close(r["acts"][seq1], cap.acts[HOOKS[0]][1, r["positions"][seq1]])


def test_skip_sequences_starts_later_and_records_the_holdout(tmp_path, tiny, corpus):
    collect(_cfg(corpus, tmp_path, max_tokens=100, skip_sequences=5), tiny, progress=False)
    r = _all_rows(tmp_path / HOOKS[0])
    manifest = _manifest(tmp_path / HOOKS[0])
    assert int(r["seq_ids"][0]) == 5 and manifest["first_sequence"] == 5
    assert manifest["next_sequence"] == int(r["seq_ids"][-1]) + 1
    assert manifest["num_sequences"] == manifest["next_sequence"] - 5


def test_live_stream_yields_the_rows_collect_would_cache(tmp_path, tiny, corpus):
    cfg = _cfg(corpus, tmp_path, hookpoints=(HOOKS[0],), max_tokens=1500)
    collect(cfg, tiny, progress=False)
    cached = _all_rows(tmp_path / HOOKS[0])
    seq_of = {row.numpy().tobytes(): int(s) for row, s in zip(cached["acts"], cached["seq_ids"], strict=True)}

    stream = LiveStream(cfg, HOOKS[0], batch_size=64, model=tiny, buffer_tokens=256)
    assert stream.d_in == 64
    batches = list(itertools.islice(stream, 5))
    assert all(b.acts.shape == (64, 64) and b.acts.dtype == torch.float32 for b in batches)
    seqs = [seq_of[row.numpy().tobytes()] for b in batches for row in b.acts]  # KeyError: row not cached
    assert len(set(seqs)) > 8  # shuffled across many sequences
    state = stream.state_dict()
    assert state["sequences_consumed"] > 0 and state["rows_yielded"] == 320

    restored = LiveStream(cfg, HOOKS[0], batch_size=64, model=tiny, buffer_tokens=256)
    restored.load_state_dict(state)
    later = next(iter(restored))
    assert min(seq_of[row.numpy().tobytes()] for row in later.acts) >= state["sequences_consumed"]


def test_live_stream_with_gradients(tiny, corpus):
    cfg = _cfg(corpus, "unused", hookpoints=(HOOKS[0],), capture_grads=True)
    batch = next(iter(LiveStream(cfg, HOOKS[0], batch_size=32, model=tiny)))
    assert batch.grads is not None and batch.grads.shape == batch.acts.shape
    assert torch.isfinite(batch.grads).all()


def test_live_stream_cycles_over_a_short_corpus(tmp_path, tiny, corpus):
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": next(iter_texts(corpus))[:1500]}) + "\n")
    cfg = _cfg(str(short), tmp_path, hookpoints=(HOOKS[0],), batch_size=4)
    tok, bos = saekit.models.tokenizer_of(tiny), saekit.models.bos_token_id(tiny)
    n_seqs = len(list(chunk_tokens(iter_texts(str(short)), tok, 32, bos_id=bos)))
    stream = LiveStream(cfg, HOOKS[0], batch_size=16, model=tiny, buffer_tokens=32)
    rows = sum(len(b) for b in itertools.islice(stream, 3 * n_seqs * 31 // 16))
    assert stream.passes >= 2 and rows == 16 * (3 * n_seqs * 31 // 16)
    # A state saved exactly at the end of a pass restores to the start of the next one.
    restored = LiveStream(cfg, HOOKS[0], batch_size=16, model=tiny, buffer_tokens=32)
    restored.load_state_dict({**stream.state_dict(), "sequences_consumed": n_seqs})
    assert len(next(iter(restored))) == 16
    assert restored.passes == stream.state_dict()["passes"] + 1


def test_rerun_repairs_a_damaged_complete_cache(tmp_path, tiny, corpus, capture_calls):
    cfg = _cfg(corpus, tmp_path, hookpoints=(HOOKS[0],), max_tokens=800)
    collect(cfg, tiny, progress=False)
    original = _manifest(tmp_path / HOOKS[0])
    shard = tmp_path / HOOKS[0] / "shard-00002.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[-5] ^= 0x40
    shard.write_bytes(bytes(blob))
    with pytest.raises(CacheError, match="shard-00002.*re-run `saekit collect`"):
        open_cache(tmp_path).verify()
    del capture_calls[:]
    collect(cfg, tiny, progress=False)
    assert len(capture_calls) > 0
    assert _manifest(tmp_path / HOOKS[0]) == original
    open_cache(tmp_path).verify()
