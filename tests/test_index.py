"""Latent index: every stored number checked against a brute-force dense encode of the same tokens."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from saekit.analysis import LatentIndex, build_index, dense_code_of, input_scores
from saekit.analysis.accumulate import LatentStats
from saekit.analysis.format import EXAMPLES_FILE, STATS_FILE
from saekit.config import HELDOUT_CORPUS, CollectConfig, SaeConfig, TrainConfig, save_config
from saekit.errors import RunDirError

HOOK = "blocks.1.hook_resid_post"
WINDOW = (4, 2)
TOP = 12


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory by hand: a small cache of the tiny model, an SAE initialised from it, config.yaml."""
    from saekit.activations import collect, open_cache
    from saekit.models import load_model
    from saekit.sae import Sae, estimate_act_scale, init_sae_from_data_

    root = tmp_path_factory.mktemp("run")
    model = load_model("tiny")
    collect(
        CollectConfig(
            model="tiny",
            hookpoints=(HOOK,),
            context_length=32,
            max_tokens=800,
            batch_size=8,
            shard_tokens=400,
            out_dir=str(root / "cache"),
        ),
        model=model,
    )
    cfg = TrainConfig(
        sae=SaeConfig.make("topk", k=4, d_sae=96),
        cache_dir=str(root / "cache"),
        hookpoint=HOOK,
        run_dir=str(root / "run"),
    )
    x = open_cache(cfg.cache_dir, HOOK).rows(800)
    sae = Sae(
        x.shape[1],
        cfg.sae,
        act_scale=estimate_act_scale(x, "mean_norm_sqrt_d"),
        hookpoint=HOOK,
        model_id="tiny",
    )
    init_sae_from_data_(sae, sae.scale_input(x))
    run = root / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    sae.save(run / "final")
    sae.eval()
    build_index(
        run,
        model=model,
        num_sequences=22,
        batch_size=5,
        top_examples=TOP,
        quantile_bins=3,
        examples_per_bin=2,
        context_window=WINDOW,
        progress=False,
    )
    return run, model, sae


@pytest.fixture(scope="module")
def brute(tiny_run):
    """Dense codes [N, T, d_sae] of the indexed sequences, special positions zeroed."""
    from saekit.models import capture, special_token_mask

    run, model, sae = tiny_run
    tokens = load_file(str(run / "index" / EXAMPLES_FILE))["sequences"].long()
    acts = capture(model, tokens, [HOOK]).acts[HOOK]
    z = dense_code_of(sae, acts.reshape(-1, acts.shape[-1])).view(*tokens.shape, sae.d_sae)
    special = special_token_mask(tokens, model)
    z[special] = 0.0
    return tokens, z, special


def test_indexed_text_is_held_out(tiny_run, brute):
    from saekit.data import chunk_tokens, iter_texts
    from saekit.models import bos_token_id, tokenizer_of

    run, model, _ = tiny_run
    tokens, _, _ = brute
    # an embedded-corpus run is indexed on the corpus's held-out document split, read from its start
    expected = list(
        chunk_tokens(
            iter_texts(HELDOUT_CORPUS),
            tokenizer_of(model),
            32,
            bos_id=bos_token_id(model),
            max_sequences=22,
        )
    )
    assert torch.equal(tokens, torch.stack(expected))
    meta = json.loads((run / "index" / "index.json").read_text())
    text = meta["text"]
    assert text["corpus"] == HELDOUT_CORPUS and text["skipped_sequences"] == 0 and meta["d_sae"] == 96


def test_frequency_mean_max_match_brute_force(tiny_run, brute):
    index = LatentIndex.open(tiny_run[0])
    _, z, special = brute
    fired = z > 0
    count = fired.sum((0, 1))
    n_tokens = int((~special).sum())
    assert index.meta["tokens"] == n_tokens
    assert torch.equal(index.stats["count"], count)
    torch.testing.assert_close(index.densities(), count.float() / n_tokens)
    torch.testing.assert_close(index.stats["max_activation"], z.amax((0, 1)), rtol=1e-4, atol=1e-5)
    mean = z.sum((0, 1)) / count.clamp(min=1)
    torch.testing.assert_close(index.stats["mean_activation"], mean, rtol=1e-4, atol=1e-5)
    assert torch.equal(index.stats["histogram"].sum(1).long(), count)


def test_top_examples_match_brute_force(tiny_run, brute):
    index = LatentIndex.open(tiny_run[0])
    tokens, z, _ = brute
    ex = load_file(str(index.directory / EXAMPLES_FILE))
    seq_max, seq_arg = z.max(dim=1)  # [N, d_sae]: one example per sequence, at its maximum
    checked = 0
    for i in range(index.d_sae):
        ranked = torch.sort(seq_max[:, i], descending=True).values
        expected = ranked[ranked > 0][:TOP]
        n = expected.numel()
        assert int(index.stats["n_top_examples"][i]) == n
        torch.testing.assert_close(ex["top_values"][i, :n], expected, rtol=1e-4, atol=1e-5)
        for j in range(n):
            seq, pos = int(ex["top_seq"][i, j]), int(ex["top_pos"][i, j])
            assert pos == int(seq_arg[seq, i]), (i, j)
            lo = pos - WINDOW[0]
            for w in range(sum(WINDOW) + 1):
                t = lo + w
                inside = 0 <= t < tokens.shape[1]
                assert int(ex["top_tokens"][i, j, w]) == (int(tokens[seq, t]) if inside else -1)
                want = float(z[seq, t, i]) if inside else 0.0
                assert abs(float(ex["top_acts"][i, j, w]) - want) <= 2e-3 * max(1.0, abs(want))
            checked += 1
        assert (ex["top_seq"][i, n:] == -1).all() and (ex["top_tokens"][i, n:] == -1).all()
    assert checked > 0


def test_quantiles_within_one_histogram_bin(tiny_run, brute):
    index = LatentIndex.open(tiny_run[0])
    _, z, _ = brute
    levels = index.stats["quantile_levels"].tolist()
    for i in range(index.d_sae):
        vals = torch.sort(z[..., i][z[..., i] > 0]).values
        if vals.numel() == 0:
            assert (index.stats["quantiles"][i] == 0).all()
            continue
        width = 2.0 * float(vals[-1]) / 256 + 1e-5  # the streaming histogram's widest possible bin
        for q, got in zip(levels, index.stats["quantiles"][i].tolist(), strict=True):
            lo = vals[max(0, math.floor(q * vals.numel()) - 1)]
            hi = vals[min(vals.numel() - 1, math.ceil(q * vals.numel()))]
            assert float(lo) - width <= got <= float(hi) + width, (i, q)


def test_streaming_histogram_widening_is_exact():
    stats = LatentStats(2, bins=8)
    values = torch.tensor([1.0, 0.5, 3.0, 7.0, 40.0, 0.25, 6.0, 100.0])
    for v in values:  # one at a time: every arrival of a larger maximum widens the bins
        stats.update(torch.tensor([0]), v[None], n_tokens=1)
    assert int(stats.hist[0].sum()) == values.numel() and int(stats.count[0]) == values.numel()
    edges = torch.arange(9, dtype=torch.float64) * stats.width[0]
    expected = torch.histogram(values.double(), bins=edges).hist.long()
    assert torch.equal(stats.hist[0], expected)
    assert float(stats.max[0]) == 100.0 and int(stats.count[1]) == 0


def test_quantile_examples_are_binned_firings(tiny_run, brute):
    index = LatentIndex.open(tiny_run[0])
    _, z, _ = brute
    ex = load_file(str(index.directory / EXAMPLES_FILE))
    for i in range(index.d_sae):
        bounds = ex["quant_bounds"][i]
        for j in range(ex["quant_seq"].shape[1]):
            seq = int(ex["quant_seq"][i, j])
            if seq < 0:
                continue
            pos, b = int(ex["quant_pos"][i, j]), int(ex["quant_bin"][i, j])
            value = float(ex["quant_values"][i, j])
            assert value > 0 and abs(value - float(z[seq, pos, i])) < 1e-4
            assert j // 2 == b  # slot = bin * examples_per_bin + rank
            assert float(bounds[b]) - 1e-6 <= value <= float(bounds[b + 1]) + 1e-6


def test_neighbours_match_brute_force_cosine(tiny_run):
    index = LatentIndex.open(tiny_run[0])
    sae = tiny_run[2]
    unit = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    cos = unit @ unit.T
    cos.fill_diagonal_(-math.inf)
    best = torch.topk(cos, 10, dim=1)
    assert torch.equal(index.stats["neighbour_ids"].long(), best.indices)
    torch.testing.assert_close(index.stats["neighbour_cos"], best.values, rtol=1e-5, atol=1e-6)


def test_logit_effects_and_scores(tiny_run):
    from saekit.models import final_norm_and_unembed

    run, model, sae = tiny_run
    index = LatentIndex.open(run)
    logits = final_norm_and_unembed(model)(sae.W_dec.detach())
    assert torch.equal(index.stats["promoted_ids"].long(), torch.topk(logits, 10, dim=1).indices)
    assert torch.equal(index.stats["suppressed_ids"].long(), torch.topk(-logits, 10, dim=1).indices)
    assert torch.equal(index.stats["lens_ids"].long(), torch.topk(logits, 20, dim=1).indices)
    s_in, s_out = index.stats["input_score"], index.stats["output_score"]
    enough = index.stats["n_top_examples"] >= 10
    assert torch.isnan(s_in[~enough]).all() and torch.isfinite(s_in[enough]).all() and enough.any()
    assert ((s_in[enough] >= 0) & (s_in[enough] <= 1)).all()
    assert ((s_out >= 0) & (s_out <= 1)).all()
    product = index.stats["output_rank_score"] * index.stats["output_prob_score"]
    torch.testing.assert_close(s_out, product, rtol=1e-5, atol=1e-7)
    expected = input_scores(index.stats["top_max_tokens"], index.stats["lens_ids"])
    torch.testing.assert_close(s_in, expected, equal_nan=True)


def test_input_score_counts_max_tokens_in_lens():
    tops = torch.tensor([[5, 6, 7, 5, 9, 5, 1, 2, 3, 4], [5] * 9 + [-1]])
    lens = torch.tensor([[5, 7], [5, 8]])
    scores = input_scores(tops, lens, min_examples=10)
    assert scores[0].item() == pytest.approx(0.4)
    assert math.isnan(scores[1].item())  # only 9 examples


def test_latent_card_and_queries(tiny_run):
    index = LatentIndex.open(tiny_run[0])
    i = index.top_by("frequency", 1)[0]
    card = index.latent(i)
    assert card.count == int(index.stats["count"][i]) and card.frequency == pytest.approx(
        float(index.densities()[i])
    )
    assert (
        sum(card.histogram_counts) == card.count
        and len(card.histogram_edges) == len(card.histogram_counts) + 1
    )
    assert len(card.top_examples) == int(index.stats["n_top_examples"][i]) > 0
    first = card.top_examples[0]
    assert first.activation == pytest.approx(card.max_activation, rel=1e-4)
    assert first.acts[first.centre] == pytest.approx(first.activation, rel=1e-2)
    assert first.tokens == index.decode(first.token_ids) and len(first.tokens) == len(first.acts)
    assert all(e.bin is not None for e in card.quantile_examples)
    assert [n for n, _ in card.neighbours] == index.stats["neighbour_ids"][i].tolist()
    assert 0 <= card.output_score <= 1
    freq = index.densities()
    assert freq[index.top_by("frequency", 5)].tolist() == sorted(freq.tolist(), reverse=True)[:5]
    low = index.top_by("max_activation", 3, descending=False)
    assert index.stats["max_activation"][low].tolist() == sorted(index.stats["max_activation"].tolist())[:3]
    scored = index.top_by("input_score", 1000)
    assert len(scored) == int(torch.isfinite(index.stats["input_score"]).sum())
    summary = index.summary()
    assert summary["d_sae"] == 96 and summary["tokens"] == index.meta["tokens"]
    with pytest.raises(IndexError):
        index.latent(96)


def test_find_by_token(tiny_run):
    index = LatentIndex.open(tiny_run[0])
    tops, lens = index.stats["top_max_tokens"], index.stats["lens_ids"]
    i = int(torch.argmax(index.stats["n_top_examples"]))
    token_id = int(torch.mode(tops[i][tops[i] >= 0]).values)
    token = index.vocab[token_id]
    found = index.find_by_token(token, side="input", min_fraction=0.0)
    resolved = index.token_id(token)  # the lowest id decoding to this string
    frac = (tops == resolved).sum(1)
    assert set(found) == set((frac > 0).nonzero().flatten().tolist())
    assert resolved != token_id or i in found
    out_token = index.vocab[int(lens[3, 0])]
    out_id = index.token_id(out_token)
    via_lens = index.find_by_token(out_token, side="output")
    assert 3 in via_lens and set(via_lens) == set((lens == out_id).any(1).nonzero().flatten().tolist())
    assert index.find_by_token("no such token, surely") == []


def test_rebuild_is_atomic(tiny_run, monkeypatch):
    import saekit.analysis.assemble as assemble

    run, model, _ = tiny_run
    before = (run / "index" / STATS_FILE).read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(assemble, "save_file", crash)
    with pytest.raises(RuntimeError):
        build_index(
            run, model=model, num_sequences=4, batch_size=4, progress=False, compute_output_scores=False
        )
    assert (run / "index" / STATS_FILE).read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_missing_index_says_how_to_build(tmp_path):
    with pytest.raises(RunDirError, match="saekit index"):
        LatentIndex.open(tmp_path)


def test_latent_card_of_a_16k_index_reads_lazily(tmp_path):
    """A card must not read the whole example file: time it on a synthetic 16k-latent index."""
    import time

    from saekit.analysis.assemble import write_index
    from saekit.analysis.format import QUANTILE_LEVELS

    d, k, s, w, vocab = 16384, 20, 25, 21, 49152
    ints = lambda *shape: torch.randint(0, vocab, shape, dtype=torch.int32)
    stats = {
        name: torch.rand(d)
        for name in (
            "frequency",
            "mean_activation",
            "max_activation",
            "input_score",
            "output_score",
            "output_rank_score",
            "output_prob_score",
        )
    }
    stats.update(
        count=torch.randint(0, 99, (d,)),
        quantile_levels=torch.tensor(QUANTILE_LEVELS),
        quantiles=torch.rand(d, len(QUANTILE_LEVELS)),
        histogram=torch.randint(0, 9, (d, 32)),
        neighbour_ids=ints(d, 10),
        neighbour_cos=torch.rand(d, 10),
        top_max_tokens=ints(d, k),
        n_top_examples=torch.full((d,), k, dtype=torch.int32),
        promoted_ids=ints(d, 10),
        promoted_logits=torch.rand(d, 10),
        suppressed_ids=ints(d, 10),
        suppressed_logits=torch.rand(d, 10),
        lens_ids=ints(d, 20),
    )
    examples = {
        "top_tokens": ints(d, k, w),
        "top_acts": torch.rand(d, k, w).half(),
        "top_values": torch.rand(d, k),
        "top_seq": ints(d, k),
        "top_pos": torch.full((d, k), 10, dtype=torch.int32),
        "quant_tokens": ints(d, s, w),
        "quant_acts": torch.rand(d, s, w).half(),
        "quant_values": torch.rand(d, s),
        "quant_seq": ints(d, s),
        "quant_pos": torch.full((d, s), 10, dtype=torch.int32),
        "quant_bin": ints(d, s) % 5,
        "quant_bounds": torch.rand(d, 6),
        "sequences": ints(256, 128),
    }
    meta = {
        "format_version": 1,
        "d_sae": d,
        "model_id": "x",
        "hookpoint": "h",
        "tokens": 1,
        "settings": {"context_window": [16, 4]},
        "text": {},
    }
    write_index(
        tmp_path / "index", {"stats": stats, "examples": examples}, meta, [f"t{i}" for i in range(vocab)]
    )
    index = LatentIndex.open(tmp_path)
    start = time.perf_counter()
    cards = [index.latent(i) for i in (0, 8191, 16383)]
    per_card = (time.perf_counter() - start) / len(cards)
    assert per_card < 1.0, f"a latent card took {per_card:.3f} s"
    print(f"latent card: {per_card * 1e3:.1f} ms")
    assert len(cards[1].top_examples) == k and len(cards[2].quantile_examples) == s
    assert cards[1].top_examples[0].token_ids == examples["top_tokens"][8191, 0].tolist()


def test_index_bench_times_both_variants_and_leaves_the_runs_index_alone(tiny_run):
    from saekit.bench.index import run_index_bench
    from saekit.config_bench import BenchConfig

    run, _, _ = tiny_run
    before = (run / "index" / "index.json").read_bytes()
    text = run_index_bench(BenchConfig(mode="index", run=str(run), sequences=(3,), reps=1))
    assert "3 sequences" in text and "-> ratio" in text and "of the bare forward's speed" in text
    assert (run / "index" / "index.json").read_bytes() == before
