"""Trainer: exact resume, run-directory safety, bad data, metrics log."""

import json

import pytest
import torch
from fixtures_run import collect_tiny_cache
from safetensors.torch import load_file

from saekit.config import CollectConfig, SaeConfig, TrainConfig
from saekit.errors import DataError, RunDirError
from saekit.train import train


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return collect_tiny_cache(tmp_path_factory.mktemp("cache"), max_tokens=3000, shard_tokens=700)


def _cfg(cache, run_dir, **kw):
    sae = SaeConfig.make("topk", k=4, expansion_factor=2, dead_tokens=300, k_aux=8)
    base = dict(
        sae=sae,
        cache_dir=str(cache),
        run_dir=str(run_dir),
        total_tokens=128 * 12,
        batch_size=128,
        log_every=2,
        checkpoint_every=3,
        norm_estimation_tokens=512,
        shuffle_buffer_tokens=1024,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(run_dir):
    return load_file(str(run_dir / "final" / "sae.safetensors"))


def test_resume_gives_identical_weights(tiny_cache, tmp_path):
    full = train(_cfg(tiny_cache, tmp_path / "full"))
    half_cfg = _cfg(tiny_cache, tmp_path / "half", total_tokens=128 * 6)
    train(half_cfg)  # stops at step 6 with a checkpoint at step 3 and final at 6
    # Simulate an interruption: drop the final weights, continue to 12 steps from the step-3 checkpoint.
    import shutil

    shutil.rmtree(tmp_path / "half" / "final")
    resumed = train(_cfg(tiny_cache, tmp_path / "half"), resume=True)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "metrics.jsonl must have no duplicated steps after resume"


def test_metrics_log_and_final_checkpoint(tiny_cache, tmp_path):
    run = train(_cfg(tiny_cache, tmp_path / "run"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 and rows[-1]["tokens"] == 12 * 128
    for key in ("loss", "fvu", "l0", "dead_fraction", "dense_fraction", "revived", "lr", "tokens_per_s"):
        assert key in rows[-1], key
    assert all(0 <= r["dense_fraction"] <= 1 and r["revived"] >= 0 for r in rows)
    assert rows[-1]["l0"] <= 4
    cfg = json.loads((run / "final" / "cfg.json").read_text())
    assert cfg["d_in"] == 64 and cfg["d_sae"] == 128 and cfg["act_scale"] > 0
    w_dec = _weights(run)["W_dec"]
    assert torch.allclose(w_dec.norm(dim=-1), torch.ones(128), atol=1e-5)


def test_existing_run_is_not_overwritten(tiny_cache, tmp_path):
    train(_cfg(tiny_cache, tmp_path / "run", total_tokens=256))
    before = (tmp_path / "run" / "final" / "sae.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="already holds a run"):
        train(_cfg(tiny_cache, tmp_path / "run", total_tokens=256))
    assert (tmp_path / "run" / "final" / "sae.safetensors").read_bytes() == before


def test_resume_without_run_dir_fails_clearly(tiny_cache, tmp_path):
    with pytest.raises(RunDirError, match="not a run directory"):
        train(_cfg(tiny_cache, tmp_path / "missing"), resume=True)


def test_resume_on_a_cache_of_another_width_fails(tiny_cache, tmp_path):
    from saekit.activations import collect

    other = tmp_path / "other_cache"
    collect(
        CollectConfig(
            model="tiny",
            hookpoints=("blocks.1.mlp.hook_post",),
            context_length=32,
            max_tokens=600,
            batch_size=8,
            shard_tokens=700,
            out_dir=str(other),
        )
    )
    import shutil

    cache = shutil.copytree(tiny_cache, tmp_path / "cache")
    train(_cfg(cache, tmp_path / "run", total_tokens=128 * 4))
    with pytest.raises(RunDirError, match="cache_dir: run has"):  # another cache is another run
        train(_cfg(other, tmp_path / "run", total_tokens=128 * 8), resume=True)
    shutil.rmtree(cache)  # the same path re-collected at another width: caught by the shapes
    shutil.copytree(other, cache)
    with pytest.raises(DataError, match="d_in="):
        train(_cfg(cache, tmp_path / "run", total_tokens=128 * 8), resume=True)


def test_live_mode_trains_straight_from_the_model(tmp_path):
    live = CollectConfig(
        model="tiny", hookpoints=("blocks.1.hook_resid_post",), context_length=32, batch_size=8
    )
    cfg = _cfg(
        None, tmp_path / "live", cache_dir=None, live=live, total_tokens=128 * 4, norm_estimation_tokens=256
    )
    run = train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["tokens"] == 128 * 4
    assert json.loads((run / "final" / "cfg.json").read_text())["d_in"] == 64
    assert not any(tmp_path.glob("**/*.safetensors.tmp*"))
    assert not (tmp_path / "live" / "cache").exists(), "live mode must not write an activation cache"


def test_resume_from_a_checkpoint_of_another_parameter_layout_fails_clearly(tiny_cache, tmp_path):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    train(_cfg(tiny_cache, run, total_tokens=128 * 6))
    step = run / "checkpoints" / "step_0000003"
    moments = load_file(str(step / "optimizer.safetensors"))
    # As written before the encoder became latent-major: parameter 0's moments in [d_in, d_sae].
    old = {k: (v.t().contiguous() if k.startswith("0.exp_avg") else v) for k, v in moments.items()}
    assert any(old[key].shape != moments[key].shape for key in moments)
    save_file(old, str(step / "optimizer.safetensors"))
    import shutil

    shutil.rmtree(run / "final")
    with pytest.raises(RunDirError, match="another saekit parameter layout"):
        train(_cfg(tiny_cache, run, total_tokens=128 * 9), resume=True)
