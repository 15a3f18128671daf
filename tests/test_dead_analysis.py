"""saekit.analysis.dead on hand-built cases: timeline arithmetic, geometry, pre-activations, export."""

import json

import pytest
import torch

from saekit.analysis.dead import (
    dead_latent_geometry,
    dead_report,
    latent_timeline,
    max_cosine_to,
    preactivations_by_status,
    run_timeline,
    subspace_share,
)
from saekit.config import SaeConfig, TrainConfig, save_config
from saekit.io import atomic_write_json


def test_timeline_by_hand():
    t = latent_timeline(torch.tensor([0, 100, 300, 1000]), tokens=1000, dead_tokens=300, step=4)
    assert t.last_fired_token.tolist() == [1000, 900, 700, 0]
    assert t.dead.tolist() == [False, False, True, True]
    assert t.died_at_token.tolist() == [-1, -1, 1000, 300]
    assert (t.step, t.tokens, t.dead_tokens) == (4, 1000, 300)


def test_run_timeline_reads_the_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(
        TrainConfig(sae=SaeConfig.make("topk", k=2, d_sae=4, dead_tokens=50), run_dir=str(run)),
        run / "config.yaml",
    )
    for step, counts in ((2, [0, 0, 0, 0]), (4, [0, 60, 10, 200])):
        state = {"step": step, "tokens": 40 * step, "dead_tracker": {"tokens_since_fired": counts}}
        atomic_write_json(run / "checkpoints" / f"step_{step:07d}" / "trainer_state.json", state)
    t = run_timeline(run)
    assert t.step == 4 and t.tokens == 160 and t.dead_tokens == 50
    assert t.dead.tolist() == [False, True, False, True]
    assert t.last_fired_token.tolist() == [160, 100, 150, 0]
    assert run_timeline(tmp_path) is None  # no checkpoints, no timeline


def test_max_cosine_excludes_self_and_non_reference():
    W = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [1.0, 1.0, 0], [-1.0, 0, 0]])
    reference = torch.tensor([True, True, False, False])
    cos = max_cosine_to(W, torch.tensor([0, 2, 3]), reference)
    # latent 0 may not match itself: its best other reference is latent 1 (orthogonal)
    assert cos.tolist() == pytest.approx([0.0, 2**-0.5, 0.0])
    none = max_cosine_to(W, torch.tensor([0]), torch.tensor([True, False, False, False]))
    assert none.tolist() == [-torch.inf]


def test_subspace_share_by_hand():
    basis = torch.tensor([[1.0], [0.0]])
    share = subspace_share(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), basis)
    assert share.tolist() == pytest.approx([9 / 25, 0.0])


def test_geometry_separates_directions_outside_the_data_subspace():
    g = torch.Generator().manual_seed(0)
    acts = torch.zeros(500, 6)
    acts[:, :2] = torch.randn(500, 2, generator=g) * torch.tensor([3.0, 1.0])  # data lives in 2 dims
    W = torch.randn(10, 6, generator=g)
    W[:5, 2:] = 0.0  # live latents: inside the data plane
    W[5:, :2] = 0.0  # dead latents: orthogonal to it
    dead = torch.tensor([False] * 5 + [True] * 5)
    geo = dead_latent_geometry(W, dead, acts, variance=0.99)
    assert geo.subspace_rank == 2 and geo.subspace_variance >= 0.99
    assert geo.latents.tolist() == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]
    assert geo.dead.tolist() == [True] * 5 + [False] * 5
    assert torch.allclose(geo.subspace_share[:5], torch.zeros(5), atol=1e-6)
    assert torch.allclose(geo.subspace_share[5:], torch.ones(5), atol=1e-6)
    assert torch.allclose(geo.max_cos_to_live[:5], torch.zeros(5), atol=1e-6)  # orthogonal to every live one
    assert dead_latent_geometry(W, dead).subspace_share is None


def test_preactivations_match_the_encoder_formula():
    from saekit.sae import Sae

    sae = Sae(5, SaeConfig.make("topk", k=2, d_sae=6), act_scale=2.0)
    with torch.no_grad():
        sae.b_enc.copy_(torch.arange(6.0))
        sae.b_dec.fill_(0.5)
    acts = torch.randn(7, 5)
    dead = torch.tensor([True, False, False, True, False, False])
    out = preactivations_by_status(sae, acts, dead, max_values=10_000)
    h = (acts * 2.0 - 0.5) @ sae.W_enc + sae.b_enc
    assert torch.allclose(out["dead_preacts"].sort().values, h[:, dead].flatten().sort().values.detach())
    assert out["live_preacts"].numel() == 7 * 4
    assert out["dead_b_enc"].tolist() == [0.0, 3.0] and out["live_b_enc"].tolist() == [1.0, 2.0, 4.0, 5.0]
    assert preactivations_by_status(sae, acts, dead, max_values=5)["live_preacts"].numel() == 5


def test_dead_report_is_json_and_consistent():
    t = latent_timeline(torch.tensor([0, 500, 10]), tokens=600, dead_tokens=100)
    W = torch.eye(3)
    geo = dead_latent_geometry(W, t.dead, torch.randn(20, 3))
    report = json.loads(json.dumps(dead_report(t.dead, source="tracker", timeline=t, geometry=geo)))
    assert report["dead_count"] == 1 and report["d_sae"] == 3
    assert report["dead_fraction"] == pytest.approx(1 / 3)
    (entry,) = report["latents"]
    assert entry == {
        "latent": 1,
        "last_fired_token": 100,
        "tokens_since_fired": 500,
        "died_at_token": 200,
        "max_cos_to_live": pytest.approx(0.0, abs=1e-6),
        "subspace_share": entry["subspace_share"],
    }
    assert 0.0 <= entry["subspace_share"] <= 1.0 + 1e-6
    assert dead_report(torch.zeros(3, dtype=torch.bool), source="index")["latents"] == []
