"""Runs that cannot contradict themselves and lose nothing: kill -9 mid-training and mid-checkpoint (resume
bit-exact, leftovers cleaned), a concurrent writer, a full disk, non-finite training, failed starts, the
resume rules (resume_config, safe changes recorded) and absolute/relative paths in config.yaml."""

import dataclasses
import errno
import json
import logging
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from fixtures_run import collect_tiny_cache
from safetensors.torch import load_file

from saekit.config import SaeConfig, TrainConfig, load_config, save_config
from saekit.errors import ConfigError, DataError, RunDirError
from saekit.rundir import LOCK_FILE, RunDir
from saekit.train import checkpoint as checkpoint_module
from saekit.train import resume_config, train
from saekit.train import trainer as trainer_module
from saekit.train.checkpoint import read_trainer_state
from saekit.train.resume import check_resume

HOOK = "blocks.1.hook_resid_post"
STEPS = 12  # checkpoints at 3, 6, 9; final at 12


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return collect_tiny_cache(tmp_path_factory.mktemp("cache"), max_tokens=2000)


def _cfg(cache, run_dir, **kw):
    base = dict(
        sae=SaeConfig.make("topk", k=4, expansion_factor=2, dead_tokens=300, k_aux=8),
        cache_dir=str(cache),
        hookpoint=HOOK,
        run_dir=str(run_dir),
        total_tokens=128 * STEPS,
        batch_size=128,
        log_every=2,
        checkpoint_every=3,
        norm_estimation_tokens=512,
        shuffle_buffer_tokens=1024,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def full_run(tiny_cache, tmp_path_factory):
    """The uninterrupted run every interrupted one must equal, bit for bit."""
    return train(_cfg(tiny_cache, tmp_path_factory.mktemp("full") / "run"))


def _assert_same_final(a, b):
    wa, wb = (load_file(str(RunDir(p).final_dir / "sae.safetensors")) for p in (a, b))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=0, msg=name)


def _leftovers(run_dir):
    return [str(p) for p in run_dir.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


def _metric_steps(run_dir):
    return [json.loads(line)["step"] for line in RunDir(run_dir).metrics_path.read_text().splitlines()]


def _files(root):
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CHILD = textwrap.dedent(
    """
    import sys, time
    from saekit.config import TrainConfig, load_config
    from saekit.train import checkpoint, train, trainer

    cfg = load_config(TrainConfig, sys.argv[1])
    mode, at = sys.argv[2], int(sys.argv[3])

    def pause():
        print("paused", flush=True)
        time.sleep(600)  # killed by the test long before

    if mode == "step":
        step = trainer.Trainer.step
        def paused_step(self, batch):
            out = step(self, batch)
            if self.step_count == at:
                pause()
            return out
        trainer.Trainer.step = paused_step
    else:  # inside the staged write of checkpoint `at`, after its optimizer file
        save_file = checkpoint.save_file
        def paused_save(tensors, path):
            save_file(tensors, path)
            if f"step_{at:07d}" in path:
                pause()
        checkpoint.save_file = paused_save
    train(cfg)
    """
)


def _start_and_pause(cfg, tmp_path, mode, at):
    path = tmp_path / "child.yaml"
    save_config(cfg, path)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode, str(at)], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline().strip()
    if line != "paused":
        proc.kill()
        pytest.fail(f"the training child did not reach its pause (exit {proc.wait()})")
    return proc


def test_kill_9_during_training_a_second_writer_is_refused_and_resume_is_bit_exact(
    tiny_cache, full_run, tmp_path
):
    cfg = _cfg(tiny_cache, tmp_path / "run")
    proc = _start_and_pause(cfg, tmp_path, "step", 8)  # after the step-6 checkpoint
    try:
        before = _files(tmp_path / "run")
        with pytest.raises(RunDirError, match="in use by another `saekit train`"):
            train(cfg, resume=True)
        with pytest.raises(RunDirError, match="already holds a run"):
            train(cfg)
        assert _files(tmp_path / "run") == before, "a refused writer changed the run"
    finally:
        proc.kill()
        proc.wait()
    assert RunDir(cfg.run_dir).latest_checkpoint().name == "step_0000006"
    resumed = train(cfg, resume=True)
    _assert_same_final(full_run, resumed)
    assert _metric_steps(resumed) == [2, 4, 6, 8, 10, 12]
    assert _leftovers(resumed) == []
    (entry,) = [json.loads(line) for line in RunDir(resumed).resumes_path.read_text().splitlines()]
    assert entry["checkpoint"] == "step_0000006" and entry["changed"] == {}


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one_and_resume_is_bit_exact(
    tiny_cache, full_run, tmp_path, monkeypatch
):
    cfg = _cfg(tiny_cache, tmp_path / "run")
    proc = _start_and_pause(cfg, tmp_path, "checkpoint", 9)
    proc.kill()
    proc.wait()
    run = RunDir(cfg.run_dir)
    assert [p.name for p in run.checkpoints_dir.iterdir() if p.name.startswith(".")] == [
        f".step_0000009.tmp-{proc.pid}"
    ]
    assert run.latest_checkpoint().name == "step_0000006"
    fit, seen = trainer_module.Trainer.fit, []
    monkeypatch.setattr(
        trainer_module.Trainer, "fit", lambda self: seen.append(_leftovers(run.path)) or fit(self)
    )
    resumed = train(cfg, resume=True)
    _assert_same_final(full_run, resumed)
    # Removed when the next start begins, not only when step 9 happens to be written again.
    assert seen == [[]] and _leftovers(resumed) == []


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_checkpoint(
    tiny_cache, full_run, tmp_path, monkeypatch, caplog
):
    from saekit.cli import main

    cfg = _cfg(tiny_cache, tmp_path / "run")
    save_config(cfg, tmp_path / "cfg.yaml")
    save_file = checkpoint_module.save_file

    def full_disk(tensors, path):
        if "step_0000006" in path:
            save_file(tensors, path)  # half of the checkpoint is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        save_file(tensors, path)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    with caplog.at_level(logging.ERROR, logger="saekit"):
        assert main(["train", str(tmp_path / "cfg.yaml")]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "No space left on device" in line and "step_0000003 is intact" in line and "--resume" in line
    run = RunDir(cfg.run_dir)
    assert [p.name for p in run.checkpoints()] == ["step_0000003"] and not run.final_dir.exists()
    assert _leftovers(run.path) == []
    read_trainer_state(run.step_dir(3))  # still complete and valid
    monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    _assert_same_final(full_run, train(cfg, resume=True))


def test_a_full_disk_at_the_first_checkpoint_leaves_nothing(tiny_cache, tmp_path, monkeypatch):
    def full_disk(tensors, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    with pytest.raises(
        RunDirError, match="No space left on device.*no checkpoint was written yet.*start it again"
    ):
        train(_cfg(tiny_cache, tmp_path / "run"))
    assert list(tmp_path.iterdir()) == []


def test_lr_inf_never_writes_a_final_and_leaves_nothing_behind(tiny_cache, tmp_path):
    with pytest.raises((ConfigError, DataError), match="lr"):  # refused by the config, or by the guard
        train(_cfg(tiny_cache, tmp_path / "run", lr=float("inf")))
    assert not (tmp_path / "run").exists()


def test_a_non_finite_parameter_stops_training_and_keeps_the_last_good_checkpoint(
    tiny_cache, tmp_path, monkeypatch
):
    import saekit.train.step as step_module

    adam_step = step_module.constrained_adam_step

    def poisoned(sae, optimizer, **kw):  # the 5th optimiser step writes a NaN into the decoder
        adam_step(sae, optimizer, **kw)
        if poisoned.calls == 4:
            sae.W_dec.data[0, 0] = float("nan")
        poisoned.calls += 1

    poisoned.calls = 0
    monkeypatch.setattr(step_module, "constrained_adam_step", poisoned)
    with pytest.raises(
        DataError, match=r"diverged at step 5: parameter W_dec.*step_0000003 is kept.*lower lr"
    ):
        train(_cfg(tiny_cache, tmp_path / "run"))
    run = RunDir(tmp_path / "run")
    assert not run.final_dir.exists() and [p.name for p in run.checkpoints()] == ["step_0000003"]
    weights = load_file(str(run.step_dir(3) / "sae" / "sae.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_a_non_finite_loss_is_caught_at_its_step(tiny_cache, tmp_path, monkeypatch):
    make_objective = trainer_module.make_objective

    def nan_loss_objective(cfg):
        objective = make_objective(cfg)
        real_call = objective.__call__

        def call(*args, **kw):
            out = real_call(*args, **kw)
            return dataclasses.replace(out, loss=out.loss * float("nan"))

        objective.__call__ = call
        return _Callable(objective, call)

    monkeypatch.setattr(trainer_module, "make_objective", nan_loss_objective)
    with pytest.raises(DataError, match="diverged at step 1: the loss is nan; no checkpoint"):
        train(_cfg(tiny_cache, tmp_path / "a" / "b" / "run"))
    assert not (tmp_path / "a").exists(), "a failed start removes the directories it created"


def test_a_failed_start_in_an_existing_empty_dir_leaves_it_empty(tiny_cache, tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()

    def interrupted(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_cache, tmp_path / "run"))
    assert list((tmp_path / "run").iterdir()) == []


def test_a_start_killed_before_its_first_checkpoint_can_start_again(tiny_cache, tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / LOCK_FILE).touch()  # what our own start leaves (never deleted) beside its first files
    run.config_path.write_text("stale: true\n")
    run.metrics_path.write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "lo')
    (run.path / "tensorboard").mkdir()  # a tracker's directory (log.tensorboard) is part of the start too
    (run.path / "tensorboard" / "events.out").write_text("stale")
    with monkeypatch.context() as patch:  # a restart that fails too leaves only the lock file
        patch.setattr(trainer_module.Trainer, "fit", lambda self: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            train(_cfg(tiny_cache, run.path, total_tokens=128 * 4))
    assert [p.name for p in run.path.iterdir()] == [LOCK_FILE]
    train(_cfg(tiny_cache, run.path, total_tokens=128 * 4))
    assert _metric_steps(run.path) == [2, 4], "the new start must not append to the old log"


def test_a_half_written_metrics_line_does_not_block_resume(tiny_cache, tmp_path):
    run = RunDir(train(_cfg(tiny_cache, tmp_path / "run", total_tokens=128 * 6)))
    shutil.rmtree(run.final_dir)
    with open(run.metrics_path, "a") as fh:
        fh.write('{"step": 7, "loss": 0.')  # cut short by a kill or a full disk
    train(_cfg(tiny_cache, run.path), resume=True)
    assert _metric_steps(run.path) == [2, 4, 6, 8, 10, 12]


# ---------------------------------------------------------------------------------------- resume rules


def test_resume_config_keeps_the_runs_settings_and_records_safe_changes(tiny_cache, full_run, tmp_path):
    run = RunDir(train(_cfg(tiny_cache, tmp_path / "run", total_tokens=128 * 6, seed=0)))
    saved = run.load_config()
    assert resume_config(None, [f"run_dir={run.path}"]) == saved  # omitted keys: the run's values
    extended = resume_config(None, [f"run_dir={run.path}", f"total_tokens={128 * STEPS}", "log_every=3"])
    assert check_resume(run, extended) == {"log_every": (2, 3), "total_tokens": (768, 1536)}
    train(extended, resume=True)
    assert run.load_config().total_tokens == 128 * STEPS and run.load_config().log_every == 3
    (entry,) = [json.loads(line) for line in run.resumes_path.read_text().splitlines()]
    assert entry["changed"]["total_tokens"] == {"run": 768, "now": 1536} and entry["step"] == 3


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["sae.k=2"], "sae.k: run has 4, given 2"),
        (["sae.params.k=2"], "sae.k: run has 4, given 2"),
        (["lr=0.05", "batch_size=100"], "batch_size: run has 128, given 100; lr: run has null, given 0.05"),
        (["sae.method=batchtopk"], 'sae.method: run has "topk", given "batchtopk".'),
    ],
)
def test_resume_refuses_what_changes_the_run(tiny_cache, tmp_path, overrides, named):
    run = RunDir(train(_cfg(tiny_cache, tmp_path / "run", total_tokens=128 * 4)))
    before = _files(run.path)
    cfg = resume_config(None, [f"run_dir={run.path}", *overrides])
    with pytest.raises(RunDirError, match="differs in settings that change the run") as err:
        train(cfg, resume=True)
    assert named in str(err.value)
    assert _files(run.path) == before


def test_resume_config_reads_the_config_file_and_needs_a_run(tiny_cache, tmp_path):
    cfg = _cfg(tiny_cache, tmp_path / "run", total_tokens=128 * 4)
    save_config(cfg, tmp_path / "cfg.yaml")
    with pytest.raises(RunDirError, match="not a run directory"):
        resume_config(tmp_path / "cfg.yaml", [])
    run = RunDir(train(cfg))
    assert check_resume(run, resume_config(tmp_path / "cfg.yaml", [])) == {}
    # The saved layout (sae.params.k) and the shorthand override meet: the override wins.
    assert resume_config(run.config_path, ["sae.k=2"]).sae.params.k == 2
    assert resume_config(run.config_path, ["sae.method=batchtopk"]).sae.params.k == 32  # its defaults


# ---------------------------------------------------------------------------------------- paths


def test_config_yaml_stores_absolute_paths(tiny_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_cache, tmp_path / "runs" / "cache")
    run_dir = train(_cfg("runs/cache", "runs/topk", total_tokens=128 * 2))
    assert run_dir == tmp_path / "runs" / "topk"
    saved = load_config(TrainConfig, run_dir / "config.yaml")
    assert saved.cache_dir == str(tmp_path / "runs" / "cache") and saved.run_dir == str(run_dir)


def test_relative_cache_dir_of_an_old_run_resolves_the_same_from_anywhere(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "runs" / "cache").mkdir(parents=True)
    old = RunDir(project / "runs" / "topk")
    old.path.mkdir()
    save_config(TrainConfig(cache_dir="runs/cache", run_dir="runs/topk"), old.config_path)
    for cwd in (project, project / "runs", tmp_path):  # the CLI, a notebook, the app elsewhere
        monkeypatch.chdir(cwd)
        assert RunDir(old.path).load_config().cache_dir == str(project / "runs" / "cache")
    # A moved run (its stored run_dir no longer matches): the nearest parent holding the cache.
    moved = RunDir(tmp_path / "elsewhere" / "topk")
    shutil.copytree(old.path, moved.path)
    (tmp_path / "elsewhere" / "runs" / "cache").mkdir(parents=True)
    assert moved.load_config().cache_dir == str(tmp_path / "elsewhere" / "runs" / "cache")
    # Found nowhere: the training directory recovered from run_dir, so errors name a full path.
    shutil.rmtree(project / "runs" / "cache")
    assert RunDir(old.path).load_config().cache_dir == str(project / "runs" / "cache")


def test_cli_resume_needs_no_config_and_records_the_extension(sandbox, capsys):
    """`saekit train --resume run_dir=RUN total_tokens=N` continues with the run's own settings."""
    from saekit.cli import main

    run = RunDir(sandbox / "ckpt_run")
    steps_before = json.loads((run.latest_checkpoint() / "trainer_state.json").read_text())["step"]
    assert main(["train", "--resume", f"run_dir={run.path}", "total_tokens=640", "progress=false"]) == 0
    assert run.is_finished()
    state = json.loads((run.final_dir / "trainer_state.json").read_text())
    assert state["tokens"] == 640 and state["step"] > steps_before
    record = [json.loads(line) for line in (run.path / "resumes.jsonl").read_text().splitlines()][-1]
    assert "total_tokens" in json.dumps(record)
    assert run.load_config().total_tokens == 640
    assert main(["train", "--resume", f"run_dir={run.path}", "sae.k=2"]) == 2  # changes the run: refused


class _Callable:
    """An objective whose call is replaced (instances ignore an assigned __call__)."""

    def __init__(self, objective, call):
        self._objective, self._call = objective, call

    def __call__(self, *args, **kw):
        return self._call(*args, **kw)

    def __getattr__(self, name):
        return getattr(self._objective, name)
