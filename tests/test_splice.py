"""Spliced CE/KL (algorithms.md §10, §12 "Metrics"): identity/ablation limits, BOS exclusion, no BOS splice.

The first tests use a toy causal LM behind the same three `saekit.models` calls the splice code makes
(special_token_mask, logits_of, run_with_splice), so the splicing logic is checked on its own; the last
ones run the real `tiny` TransformerBridge model through `saekit.models`.
"""

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import logging
import math
import pathlib

import pytest
import torch
from torch import nn

from saekit.eval import splice as splice_mod
from saekit.eval.metrics import ReconstructionStats
from saekit.eval.splice import kl_per_position, log_probs, recovered_fraction, spliced_losses
from saekit.types import SparseCode

BOS = 0
VOCAB, D = 13, 6


class ToyLM(nn.Module):
    """embed -> [hook] -> causal running mean -> unembed. The BOS embedding is huge, like a real sink."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.unembed = nn.Linear(D, VOCAB)
        with torch.no_grad():
            self.embed.weight[BOS] *= 1000.0
        self.seen: list[torch.Tensor] = []  # activations after the splice, for inspection

    def forward(self, tokens, fn=None):
        h = self.embed(tokens)
        if fn is not None:
            h = fn(h)
        self.seen.append(h.detach().clone())
        steps = torch.arange(1, tokens.shape[1] + 1).view(1, -1, 1)
        mixed = torch.cumsum(torch.tanh(h / 10), dim=1) / steps  # position t only sees 0..t
        return self.unembed(mixed) * 3


class FakeSae:
    """The `saekit.sae.Sae` surface splicing uses, with an exact code: z = [relu(x - b), relu(b - x)] in
    the scaled space, decoded as gain * (z+ - z-) + b, so raw x̂ = gain * (x - bias) + bias."""

    def __init__(self, gain=1.0, bias=None, act_scale=2.0):
        self.d_in, self.d_sae = D, 2 * D
        self.hookpoint, self.act_scale = "toy.hook", act_scale
        self.gain = gain
        self.b = torch.zeros(D) if bias is None else bias.float() * act_scale

    def parameters(self):
        return iter([self.b])

    def scale_input(self, x):
        return x.float() * self.act_scale

    def encode(self, x_raw, training=None):
        assert training is False  # eval must use inference-mode selection
        x = self.scale_input(x_raw)  # raw in, as Sae.encode
        z = torch.cat([torch.relu(x - self.b), torch.relu(self.b - x)], dim=1)
        rows, cols = z.nonzero(as_tuple=True)
        return SparseCode.from_rows(rows, cols, z[rows, cols], x.shape[0], self.d_sae)

    def decode(self, code):
        z = code.to_dense()
        return self.gain * (z[:, :D] - z[:, D:]) + self.b

    def reconstruct(self, x):
        return self.gain * (x - self.b / self.act_scale) + self.b / self.act_scale


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(splice_mod.models, "special_token_mask", lambda t, m: t == BOS, raising=False)
    monkeypatch.setattr(splice_mod.models, "logits_of", lambda m, t: m(t), raising=False)
    monkeypatch.setattr(splice_mod.models, "run_with_splice", lambda m, t, h, fn: m(t, fn), raising=False)
    model = ToyLM()
    tokens = torch.randint(1, VOCAB, (5, 9))
    tokens[:, 0] = BOS
    tokens[2, 4] = BOS  # a packed second document: mid-sequence BOS must be excluded too
    mean_act = model.embed(tokens)[tokens != BOS].mean(0).detach()
    return model, tokens, mean_act


def _run(toy, sae, **kw):
    model, tokens, mean_act = toy
    return spliced_losses(model, sae, tokens, batch_size=2, mean_act=mean_act, progress=False, **kw)


def test_identity_splice_recovers_everything(toy):
    out = _run(toy, FakeSae(gain=1.0))
    assert out["ce_loss"]["sae"] == pytest.approx(out["ce_loss"]["clean"], abs=1e-6)
    assert out["ce_recovered"]["zero_ablation"] == pytest.approx(1.0, abs=1e-5)
    assert out["ce_recovered"]["mean_ablation"] == pytest.approx(1.0, abs=1e-5)
    assert out["kl"]["sae"] == pytest.approx(0.0, abs=1e-6)
    assert out["kl_score"]["zero_ablation"] == pytest.approx(1.0, abs=1e-5)
    assert out["kl"]["zero_ablation"] > 1e-3 and out["kl"]["mean_ablation"] > 1e-3  # ablations do hurt


def test_splice_equal_to_the_ablation_recovers_nothing(toy):
    zero = _run(toy, FakeSae(gain=0.0))
    assert zero["ce_recovered"]["zero_ablation"] == pytest.approx(0.0, abs=1e-6)
    assert zero["kl"]["sae"] == pytest.approx(zero["kl"]["zero_ablation"], rel=1e-6)
    assert zero["kl_score"]["zero_ablation"] == pytest.approx(0.0, abs=1e-6)
    mean_act = toy[2]
    mean = _run(toy, FakeSae(gain=0.0, bias=mean_act))
    assert mean["ce_recovered"]["mean_ablation"] == pytest.approx(0.0, abs=1e-6)


def test_bos_positions_are_never_spliced(toy):
    model, tokens, _ = toy
    clean = model(tokens)
    model.seen.clear()
    _run(toy, FakeSae(gain=-1e3, bias=torch.randn(D)))
    # batches of 2 -> 3 batches x (clean, zero, mean, sae) forwards: the SAE-independent ones first
    spliced = [h for i, h in enumerate(model.seen) if i % 4 == 3]
    acts = torch.cat(spliced)
    embeds = model.embed(tokens).detach()
    is_bos = tokens == BOS
    assert torch.equal(acts[is_bos], embeds[is_bos])  # BOS rows untouched
    assert not torch.allclose(acts[~is_bos], embeds[~is_bos])  # everything else replaced
    # causal model: position 0 sees only BOS, so its logits must equal the clean ones
    logits = model(tokens, lambda h: torch.where(is_bos[..., None], h, torch.zeros_like(h)))
    assert torch.allclose(logits[:, 0], clean[:, 0])


def test_bos_positions_are_excluded_from_every_average(toy):
    model, tokens, mean_act = toy
    recon = ReconstructionStats(d_sae=2 * D)
    out = _run(toy, FakeSae(gain=0.5), recon=recon)
    scored = tokens[:, :-1] != BOS
    assert out["positions"] == int(scored.sum())
    with torch.no_grad():
        logp = log_probs(model(tokens))
    nll = -logp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    assert out["ce_loss"]["clean"] == pytest.approx(float(nll[scored].mean()), rel=1e-5)
    # held-out reconstruction saw only non-BOS rows: no 1000x-norm BOS rows leaked into the sums
    assert recon.rows == int((tokens != BOS).sum())
    expected_norm = float((model.embed(tokens)[tokens != BOS].detach() ** 2).sum(-1).mean())
    assert recon.compute()["mean_input_norm_sq"] == pytest.approx(expected_norm, rel=1e-5)
    got = recon.compute()
    assert got["relative_reconstruction_bias"] == pytest.approx(0.5, rel=1e-5)  # x̂ = 0.5 x exactly
    assert got["cosine_similarity"] == pytest.approx(1.0, rel=1e-5)
    plain = _run(toy, FakeSae(gain=0.5))  # feeding `recon` must not change the losses
    assert plain["ce_loss"] == pytest.approx(out["ce_loss"], rel=1e-6)
    assert sum(recon.compute()["l0_histogram"]) == recon.rows


def test_batching_does_not_change_the_result(toy):
    model, tokens, mean_act = toy
    sae = FakeSae(gain=0.8, bias=torch.full((D,), 0.1))
    one = spliced_losses(model, sae, tokens, batch_size=1, mean_act=mean_act, progress=False)
    all_ = spliced_losses(model, sae, tokens, batch_size=5, mean_act=mean_act, progress=False)
    for key in ("clean", "sae", "zero_ablation", "mean_ablation"):
        assert one["ce_loss"][key] == pytest.approx(all_["ce_loss"][key], rel=1e-5)
    assert one["kl"]["sae"] == pytest.approx(all_["kl"]["sae"], rel=1e-4)


def test_kl_is_zero_for_identical_logits_and_matches_the_formula():
    logits = torch.randn(2, 3, 7, dtype=torch.bfloat16)
    logp = log_probs(logits)
    assert logp.dtype == torch.float32
    assert torch.all(kl_per_position(logp, logp).abs() < 1e-7)
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.25, 0.5])
    kl = kl_per_position(p.log().view(1, 1, 3), q.log().view(1, 1, 3))
    assert float(kl) == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(0.5), rel=1e-6)


def test_recovered_fraction_limits():
    assert recovered_fraction(ablated=5.0, spliced=3.0, clean=3.0) == 1.0
    assert recovered_fraction(ablated=5.0, spliced=5.0, clean=3.0) == 0.0
    assert recovered_fraction(ablated=5.0, spliced=4.0, clean=3.0) == pytest.approx(0.5)
    assert recovered_fraction(ablated=3.0, spliced=3.0, clean=3.0) is None  # undefined, not NaN


# ---------------------------------------------------------------------------------------- evaluate_run


def test_missing_run_or_checkpoint_raises_run_dir_error(tmp_path, caplog):
    from saekit.config import TrainConfig, save_config
    from saekit.errors import RunDirError
    from saekit.eval import evaluate_run
    from saekit.rundir import RunDir

    with pytest.raises(RunDirError, match="saekit train"):
        evaluate_run(tmp_path / "nope")
    (tmp_path / "run").mkdir()
    with pytest.raises(RunDirError, match="config.yaml"):
        evaluate_run(tmp_path / "run")
    save_config(TrainConfig(cache_dir=str(tmp_path / "cache")), tmp_path / "run" / "config.yaml")
    with pytest.raises(RunDirError, match="final"):
        evaluate_run(tmp_path / "run")
    for step in ("step_0000010", "step_0000020"):  # newest complete checkpoint wins, with a warning
        (tmp_path / "run" / "checkpoints" / step / "sae").mkdir(parents=True)
        (tmp_path / "run" / "checkpoints" / step / "sae" / "cfg.json").write_text("{}")
    (tmp_path / "run" / "checkpoints" / "step_0000030").mkdir()  # incomplete: no sae/
    assert RunDir(tmp_path / "run").sae_dir().parent.name == "step_0000020"
    assert "no final/" in caplog.text
    (tmp_path / "run" / "final").mkdir()
    (tmp_path / "run" / "final" / "cfg.json").write_text("{}")
    assert RunDir(tmp_path / "run").sae_dir().name == "final"


HOOK = "blocks.0.hook_resid_post"
CTX = 24


def _identity_sae(sae):
    """Make a TopK SAE with d_sae = 2 d_in and k = d_sae an exact identity: z = [relu(x), relu(-x)]."""
    eye = torch.eye(sae.d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny-model cache plus two run dirs (untrained SAE; identity SAE) built by hand, no training."""
    from saekit import models
    from saekit.activations import collect, open_cache
    from saekit.config import CollectConfig, SaeConfig, TrainConfig, save_config
    from saekit.sae import Sae

    root = tmp_path_factory.mktemp("eval_e2e")
    corpus = root / "corpus.txt"  # real English offline: docstrings of a few stdlib modules
    corpus.write_text(
        "\n\n".join(
            inspect.getdoc(m) or ""
            for m in (argparse, ast, inspect, json, logging, pathlib, dataclasses, functools)
        )
    )
    model = models.load_model("tiny", device="cpu")
    collect_cfg = CollectConfig(
        model="tiny",
        hookpoints=(HOOK,),
        corpus=str(corpus),
        context_length=CTX,
        max_tokens=600,
        batch_size=8,
        shard_tokens=250,
        out_dir=str(root / "cache"),
    )
    collect(collect_cfg, model, progress=False)
    cache = open_cache(root / "cache", HOOK)
    runs = {}
    for name, d_sae, k in (("untrained", 4 * cache.d_in, 8), ("identity", 2 * cache.d_in, 2 * cache.d_in)):
        cfg = TrainConfig(
            sae=SaeConfig.make("topk", k=k, d_sae=d_sae),
            cache_dir=str(root / "cache"),
            hookpoint=HOOK,
            run_dir=str(root / name),
        )
        save_config(cfg, root / name / "config.yaml")
        sae = Sae(cache.d_in, cfg.sae, act_scale=0.5, hookpoint=HOOK, model_id=cache.manifest["model_id"])
        (_identity_sae(sae) if name == "identity" else sae).save(root / name / "final")
        runs[name] = root / name
    return model, cache, runs


def test_evaluate_run_on_tiny_model_writes_eval_json(tiny_runs):
    from saekit.config import EvalConfig
    from saekit.eval import evaluate_run, format_eval_table

    model, cache, runs = tiny_runs
    cfg = EvalConfig(num_sequences=5, batch_size=2, max_eval_rows=300, dense_threshold=0.2)
    result = evaluate_run(runs["untrained"], cfg, model=model)
    on_disk = json.loads((runs["untrained"] / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    settings = result["settings"]
    assert settings["heldout"]["skipped_sequences"] == cache.manifest["next_sequence"] > 0
    assert settings["dense_threshold"] == 0.2 and settings["ablations"] == ["zero_ablation", "mean_ablation"]
    assert settings["tokens"]["cached_rows"] == min(300, cache.num_tokens) == result["cached"]["rows"]
    # one BOS per sequence: excluded from reconstruction (CTX-1 rows) and from scoring (CTX-2 targets)
    assert result["heldout"]["rows"] == 5 * (CTX - 1)
    assert result["splice"]["positions"] == 5 * (CTX - 2)
    for part in ("cached", "heldout"):
        assert sum(result[part]["l0_histogram"]) == result[part]["rows"]
        assert sum(result[part]["log10_density_histogram"]["counts"]) == result["sae"]["d_sae"]
        assert 0 < result[part]["l0_mean"] <= 8
    ce = result["splice"]["ce_loss"]
    assert all(math.isfinite(v) and v > 0 for v in ce.values())
    table = format_eval_table(result)
    for label in ("FVU", "1 - FVU", "L0", "dead", "dense", "CE clean", "CE recovered (zero)", "KL"):
        assert label in table


def test_evaluate_run_identity_sae_is_perfect(tiny_runs):
    from saekit.config import EvalConfig
    from saekit.eval import evaluate_run

    model, _, runs = tiny_runs
    result = evaluate_run(runs["identity"], EvalConfig(num_sequences=4, batch_size=4), model=model)
    for part in ("cached", "heldout"):
        assert result[part]["fvu"] < 1e-8
    splice = result["splice"]
    assert splice["ce_loss"]["sae"] == pytest.approx(splice["ce_loss"]["clean"], abs=1e-5)
    assert splice["ce_recovered"]["zero_ablation"] == pytest.approx(1.0, abs=1e-3)
    assert splice["ce_recovered"]["mean_ablation"] == pytest.approx(1.0, abs=1e-3)
    assert splice["kl"]["sae"] == pytest.approx(0.0, abs=1e-6)
    assert splice["kl"]["zero_ablation"] > 0


def test_real_model_bos_position_is_never_spliced(tiny_runs):
    from saekit import models
    from saekit.eval.splice import _keep_special

    model, _, _ = tiny_runs
    tokens = torch.randint(10, 200, (2, 8))
    tokens[:, 0] = models.bos_token_id(model)
    special = models.special_token_mask(tokens, model)
    assert special[:, 0].all() and not special[:, 1:].any()
    clean = models.logits_of(model, tokens)
    garbage = _keep_special(lambda act: 1e4 * torch.randn_like(act), special)
    spliced = models.run_with_splice(model, tokens, HOOK, garbage)
    assert torch.allclose(spliced[:, 0], clean[:, 0], atol=1e-5)  # causal: position 0 sees only BOS
    assert not torch.allclose(spliced[:, 1:], clean[:, 1:], atol=1e-2)


def test_cached_metrics_use_the_last_rows_across_shards(tiny_runs):
    from saekit.eval.evaluate import iter_last_rows

    _, cache, _ = tiny_runs
    assert cache.num_shards > 1
    everything = cache.rows(cache.num_tokens)
    last = torch.cat(list(iter_last_rows(cache, 300)))
    assert torch.equal(last, everything[-300:])  # crosses the 250-row shard boundary
    assert torch.equal(torch.cat(list(iter_last_rows(cache, 10**9))), everything)


def test_heldout_plan_skips_training_text_unless_the_corpus_differs():
    from saekit.config import EvalConfig, TrainConfig
    from saekit.errors import RunDirError
    from saekit.eval.evaluate import plan_heldout

    manifest = {
        "model_id": "tiny-random",
        "context_length": 32,
        "next_sequence": 130,  # collection read sequences [first_sequence, 130)
        "collect_config": {"model": "tiny", "corpus": "a.txt", "text_field": "body"},
    }
    train = TrainConfig()
    plan = plan_heldout(train, manifest, EvalConfig())
    assert (plan.model, plan.corpus, plan.text_field, plan.context_length) == ("tiny", "a.txt", "body", 32)
    assert plan.skip_sequences == 130
    other = plan_heldout(train, manifest, EvalConfig(corpus="b.txt", context_length=16))
    assert other.skip_sequences == 0 and other.corpus == "b.txt" and other.context_length == 16
    same = plan_heldout(train, manifest, EvalConfig(corpus="a.txt"))
    assert same.skip_sequences == 130
    unrecorded = {**manifest, "next_sequence": None}
    with pytest.raises(RunDirError, match="corpus="):
        plan_heldout(train, unrecorded, EvalConfig())
    assert plan_heldout(train, unrecorded, EvalConfig(corpus="b.txt")).skip_sequences == 0  # the fix works


def test_cli_eval_loads_the_model_named_in_the_manifest(tiny_runs, capsys):
    from saekit.cli import main

    _, _, runs = tiny_runs
    (runs["untrained"] / "eval.json").unlink(missing_ok=True)
    assert main(["eval", str(runs["untrained"]), "num_sequences=2", "batch_size=2", "max_eval_rows=100"]) == 0
    result = json.loads((runs["untrained"] / "eval.json").read_text())
    assert result["settings"]["heldout"]["model"] == "tiny"
    assert result["settings"]["tokens"]["heldout_sequences"] == 2
    assert "CE recovered (zero)" in capsys.readouterr().out


def test_evaluate_run_with_a_shared_memo_matches_separate_evaluations(tiny_runs):
    from saekit.config import EvalConfig
    from saekit.eval import evaluate_run
    from saekit.eval.memo import ForwardMemo

    model, _, runs = tiny_runs
    cfg = EvalConfig(num_sequences=4, batch_size=2, max_eval_rows=200)
    alone = {name: evaluate_run(runs[name], cfg, model=model) for name in ("untrained", "identity")}
    memo = ForwardMemo()  # empty: adopts the model of its first evaluation
    shared = {"untrained": evaluate_run(runs["untrained"], cfg, model=model, memo=memo)}
    assert memo.model is model and memo.hits == 0
    shared["identity"] = evaluate_run(runs["identity"], cfg, memo=memo)
    assert memo.hits > 0
    for name in alone:
        assert shared[name]["splice"] == alone[name]["splice"]
        assert shared[name]["heldout"] == alone[name]["heldout"]
        assert shared[name]["extras"] == alone[name]["extras"]
