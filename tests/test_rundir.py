"""The run-directory module and the one crash-safe staged-directory writer every directory write uses."""

import subprocess
import sys

import pytest

from saekit.errors import RunDirError
from saekit.io import staged_directory
from saekit.rundir import RunDir, step_dir_name


def write_dir(path, text):
    with staged_directory(path) as tmp:
        (tmp / "data.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "more.txt").write_text(text * 2)


def test_staged_directory_creates_and_replaces_whole_directories(tmp_path):
    target = tmp_path / "final"
    write_dir(target, "one")
    assert (target / "data.txt").read_text() == "one"
    write_dir(target, "two")
    assert (target / "data.txt").read_text() == "two"
    assert (target / "sub" / "more.txt").read_text() == "twotwo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no staging or old copies left


def test_a_failed_write_leaves_the_old_copy_untouched(tmp_path):
    target = tmp_path / "final"
    write_dir(target, "old")
    with pytest.raises(RuntimeError), staged_directory(target) as tmp:
        (tmp / "data.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert (target / "data.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_a_killed_writer_leaves_the_old_copy_and_its_leftover_is_cleaned(tmp_path):
    """kill -9 in the middle of a staged write: `final` still holds the old copy; the next write removes
    the dead process's staging directory."""
    target = tmp_path / "final"
    write_dir(target, "old")
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from saekit.io import staged_directory\n"
        f"with staged_directory(Path({str(target)!r})) as tmp:\n"
        "    (tmp / 'data.txt').write_text('new')\n"
        "    print('staged', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    proc.kill()
    proc.wait()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "final"]
    assert leftovers == [f".final.tmp-{proc.pid}"]
    assert (target / "data.txt").read_text() == "old"
    write_dir(target, "next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_rundir_paths_and_checkpoints(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.has_training() and run.latest_checkpoint() is None and not run.is_run()
    for step in (5, 20, 10):
        run.step_dir(step).mkdir(parents=True)
    (run.checkpoints_dir / f".{step_dir_name(30)}.tmp-1").mkdir()  # staging dirs are never checkpoints
    assert run.latest_checkpoint() == run.step_dir(20)
    assert [p.name for p in run.checkpoints()] == [step_dir_name(s) for s in (5, 10, 20)]
    assert run.has_training()
    with pytest.raises(RunDirError, match="no SAE checkpoint"):
        run.sae_dir()
    with pytest.raises(RunDirError, match="not a run directory"):
        run.load_config()
    with pytest.raises(RunDirError, match="does not exist"):
        RunDir(tmp_path / "missing").load_config()


def test_trainer_state_prefers_final_then_the_newest_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    run.step_dir(3).mkdir(parents=True)
    (run.step_dir(3) / "trainer_state.json").write_text('{"step": 3, "optimizer_meta": {}}')
    state = run.trainer_state()
    assert state["step"] == 3 and "optimizer_meta" not in state
    run.final_dir.mkdir()
    (run.final_dir / "trainer_state.json").write_text('{"step": 9}')
    assert run.trainer_state()["step"] == 9


def test_no_module_outside_rundir_spells_the_layout():
    """Only saekit.rundir names final/ and checkpoints/ (style.md, "one module owns the run directory")."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*(root / "saekit").rglob("*.py"), *(root / "app").rglob("*.py")]:
        if path.name == "rundir.py":
            continue
        text = path.read_text()
        for literal in ('"final"', '"checkpoints"', "'final'", "'checkpoints'", '/ "final', '/ "checkpoints'):
            if literal in text:
                offenders.append(f"{path.relative_to(root)}: {literal}")
    assert offenders == []
