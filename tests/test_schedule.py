"""Learning-rate schedule: the formula, the logged lr, the sparsity warm-up, and exact resume mid-warm-up."""

import json
import math
import shutil

import pytest
import torch
from fixtures_run import collect_tiny_cache
from safetensors.torch import load_file

from saekit.config import SaeConfig, TrainConfig
from saekit.config_train import ScheduleConfig
from saekit.errors import ConfigError
from saekit.train import train
from saekit.train.schedule import LrSchedule, warmup_factor

TOTAL = 10


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return collect_tiny_cache(tmp_path_factory.mktemp("cache"), max_tokens=2000, shard_tokens=500)


def _expected_factor(step, total, warmup, decay, final, decay_steps=None):
    """The documented formula, written out step by step (independently of LrSchedule)."""
    if warmup and step <= warmup:
        return step / warmup
    start = max(total - (decay_steps or total - warmup), warmup)
    if decay == "constant" or step <= start:
        return 1.0
    p = (step - start) / (total - start)
    return 1 - (1 - final) * p if decay == "linear" else final + (1 - final) * (1 + math.cos(math.pi * p)) / 2


@pytest.mark.parametrize("decay", ["constant", "linear", "cosine"])
@pytest.mark.parametrize(("warmup", "decay_steps"), [(0, None), (3, None), (4, 3), (5, 20)])
def test_factor_follows_the_formula(decay, warmup, decay_steps):
    cfg = ScheduleConfig(warmup_steps=warmup, decay=decay, decay_steps=decay_steps, final_lr_fraction=0.25)
    schedule = LrSchedule(cfg, 12)
    got = [schedule.factor(t) for t in range(1, 13)]
    want = [_expected_factor(t, 12, warmup, decay, 0.25, decay_steps) for t in range(1, 13)]
    assert got == pytest.approx(want, abs=1e-12)
    if decay != "constant":
        assert got[-1] == pytest.approx(0.25)  # the last step reaches the final fraction
        assert all(a >= b for a, b in zip(got[warmup:], got[warmup + 1 :], strict=False))
    if warmup:
        assert got[0] == pytest.approx(1 / warmup) and got[warmup - 1] == pytest.approx(1.0)


def test_bad_schedule_keys_fail():
    with pytest.raises(ConfigError, match="final_lr_fraction"):
        ScheduleConfig(final_lr_fraction=1.5)
    with pytest.raises(ConfigError, match="warmup_steps"):
        ScheduleConfig(warmup_steps=-1)


def _cfg(cache, run_dir, **kw):
    sae = SaeConfig.make(
        "jumprelu", target_l0=4, expansion_factor=2, dead_tokens=300, sparsity_warmup_steps=6
    )
    base = dict(
        sae=sae,
        cache_dir=str(cache),
        run_dir=str(run_dir),
        total_tokens=128 * TOTAL,
        batch_size=128,
        lr=1e-3,
        log_every=1,
        checkpoint_every=3,
        norm_estimation_tokens=512,
        shuffle_buffer_tokens=1000,
        progress=False,
        schedule=ScheduleConfig(warmup_steps=5, decay="cosine", final_lr_fraction=0.1),
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def full_run(tiny_cache, tmp_path_factory):
    return train(_cfg(tiny_cache, tmp_path_factory.mktemp("runs") / "full"))


def test_logged_lr_and_sparsity_coef_follow_the_formula(full_run):
    rows = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, TOTAL + 1))
    for row in rows:
        t = row["step"]
        assert row["lr"] == pytest.approx(1e-3 * _expected_factor(t, TOTAL, 5, "cosine", 0.1), rel=1e-12)
        assert row["sparsity_coef"] == pytest.approx(1.0 * min(1.0, t / 6), rel=1e-12)
        assert row["sparsity_coef"] == pytest.approx(warmup_factor(t, 6))


def test_resume_mid_warmup_is_exact(full_run, tiny_cache, tmp_path):
    train(_cfg(tiny_cache, tmp_path / "half", total_tokens=128 * 6))  # checkpoint at step 3 (of 5 warm-up)
    shutil.rmtree(tmp_path / "half" / "final")
    resumed = train(_cfg(tiny_cache, tmp_path / "half"), resume=True)
    a, b = (load_file(str(r / "final" / "sae.safetensors")) for r in (full_run, resumed))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    lrs = lambda run: [json.loads(x)["lr"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs(resumed) == lrs(full_run)
