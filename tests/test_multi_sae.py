"""Many SAEs from one stream: each member equals its lone run, resume restores all, sweeps expand."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from saekit.config import SaeConfig, TrainConfig, load_config
from saekit.config_train import SaeMember, SweepConfig
from saekit.errors import ConfigError, RunDirError
from saekit.rundir import RunDir
from saekit.train import resume_config, train

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")


@pytest.fixture(scope="module")
def two_hook_cache(tmp_path_factory):
    from saekit.activations import collect
    from saekit.config import CollectConfig

    out = tmp_path_factory.mktemp("cache2")
    cfg = CollectConfig(
        model="tiny",
        hookpoints=HOOKS,
        context_length=32,
        max_tokens=1500,
        batch_size=8,
        shard_tokens=500,
        out_dir=str(out),
    )
    collect(cfg, progress=False)
    return out


def _members():
    shared = dict(expansion_factor=2, dead_tokens=300)
    return (
        SaeMember(name="l0-topk", hookpoint=HOOKS[0], sae=SaeConfig.make("topk", k=4, k_aux=8, **shared)),
        SaeMember(name="l1-topk", hookpoint=HOOKS[1], sae=SaeConfig.make("topk", k=4, k_aux=8, **shared)),
        # sampled prefixes draw from the torch RNG every step: the members' RNG streams must stay apart
        SaeMember(
            name="l1-matryoshka",
            hookpoint=HOOKS[1],
            sae=SaeConfig.make("matryoshka", k=4, prefix_mode="sampled", **shared),
            lr=1e-3,
        ),
    )


def _cfg(cache, run_dir, **kw):
    base = dict(
        saes=_members(),
        cache_dir=str(cache),
        run_dir=str(run_dir),
        total_tokens=128 * 6,
        batch_size=128,
        log_every=2,
        checkpoint_every=2,
        norm_estimation_tokens=512,
        shuffle_buffer_tokens=1000,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _assert_same_weights(run_a, run_b):
    a, b = (load_file(str(r / "final" / "sae.safetensors")) for r in (run_a, run_b))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=f"{run_a.name}: {name}")


@pytest.fixture(scope="module")
def group(two_hook_cache, tmp_path_factory):
    return train(_cfg(two_hook_cache, tmp_path_factory.mktemp("runs") / "group"))


def test_each_member_equals_training_it_alone(group, tmp_path):
    for member in _members():
        run = RunDir(group / member.name)
        assert run.is_finished() and run.is_run()
        alone = run.load_config()  # the member's own config.yaml: an ordinary single-SAE config
        assert alone.members == () and alone.hookpoint == member.hookpoint
        solo = train(dataclasses.replace(alone, run_dir=str(tmp_path / member.name)))
        _assert_same_weights(group / member.name, solo)
    assert not RunDir(group).is_run()  # the group directory is no run of its own: runs lie beneath it


def test_group_resume_restores_every_member(group, two_hook_cache, tmp_path):
    half = _cfg(two_hook_cache, tmp_path / "group", total_tokens=128 * 3)
    train(half)  # checkpoint at step 2, final at step 3
    for member in _members():  # an interruption after step 2: no final weights
        shutil.rmtree(tmp_path / "group" / member.name / "final")
    # ...and a kill between two members' saves: the first member is one checkpoint ahead of the others
    ahead = tmp_path / "group" / _members()[0].name / "checkpoints"
    shutil.copytree(ahead / "step_0000002", ahead / "step_0000003")
    state = json.loads((ahead / "step_0000003" / "trainer_state.json").read_text())
    (ahead / "step_0000003" / "trainer_state.json").write_text(json.dumps({**state, "step": 3}))
    cfg = resume_config(None, [f"run_dir={tmp_path / 'group'}", f"total_tokens={128 * 6}"])  # the CLI path
    assert [m.name for m in cfg.members] == [m.name for m in _members()]
    resumed = train(cfg, resume=True)  # every member from step 2, the newest step they all have
    for member in _members():
        _assert_same_weights(group / member.name, resumed / member.name)
        steps = [
            json.loads(x)["step"] for x in (resumed / member.name / "metrics.jsonl").read_text().splitlines()
        ]
        assert steps == sorted(set(steps))


def test_resume_refuses_changed_members(group, two_hook_cache):
    changed = dataclasses.replace(_cfg(two_hook_cache, group), saes=_members()[:2])
    with pytest.raises(RunDirError, match="saes"):
        train(changed, resume=True)


def test_sweep_expands_to_named_members():
    cfg = load_config(
        TrainConfig,
        None,
        [
            "sae.method=topk",
            "sae.k=8",
            f"sweep.hookpoints=[{HOOKS[0]},{HOOKS[1]}]",
            "sweep.methods=[topk,jumprelu]",
            "sweep.k=[4,16]",
        ],
    )
    names = [m.name for m in cfg.members]
    assert len(names) == 8 == len(set(names))
    by_name = {m.name: m for m in cfg.members}
    jump = by_name[f"{HOOKS[1]}-jumprelu-k16"]
    assert jump.sae.method == "jumprelu" and jump.sae.param("target_l0") == 16
    assert jump.hookpoint == HOOKS[1]
    assert by_name[f"{HOOKS[0]}-topk-k4"].sae.param("k") == 4


def test_plain_config_has_no_members_and_bad_groups_fail():
    assert load_config(TrainConfig, "configs/tiny_topk.yaml").members == ()
    with pytest.raises(ConfigError, match="own name"):
        TrainConfig(saes=(SaeMember(name="a"), SaeMember(name="a")))
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(saes=(SaeMember(name="a"),), sweep=SweepConfig(k=(4,)))
    with pytest.raises(ConfigError, match="directory name"):
        SaeMember(name="../up")


def test_streams_bench_reads_the_cache_once_for_all_saes():
    from saekit.bench import run_bench
    from saekit.config import BenchConfig

    text = run_bench(
        BenchConfig(mode="streams", saes=2, d_in=16, d_sae=(32,), k=(4,), batch=256, tokens=1024)
    )
    assert "2 separate runs" in text and "one stream, 2 SAEs" in text
    ratio = float(text.split("cache bytes read per SAE: ")[1].split("x")[0])
    assert ratio < 0.75  # each window read once for both SAEs (1/2 plus the shared sample read)


@pytest.mark.slow
def test_live_members_equal_training_them_alone(tmp_path):
    from saekit.config import CollectConfig

    live = CollectConfig(model="tiny", hookpoints=HOOKS, context_length=32, batch_size=8)
    sae = SaeConfig.make("topk", k=4, expansion_factor=2, dead_tokens=300)
    members = tuple(SaeMember(name=f"m{i}", hookpoint=hook, sae=sae) for i, hook in enumerate(HOOKS))
    cfg = TrainConfig(
        saes=members,
        cache_dir=None,
        live=live,
        run_dir=str(tmp_path / "group"),
        total_tokens=128 * 5,
        batch_size=128,
        norm_estimation_tokens=256,
        log_every=2,
        progress=False,
    )
    group = train(cfg)  # one model forward per batch for both hook points
    for member in members:
        alone = RunDir(group / member.name).load_config()
        solo = train(dataclasses.replace(alone, run_dir=str(tmp_path / member.name)))
        _assert_same_weights(group / member.name, solo)
