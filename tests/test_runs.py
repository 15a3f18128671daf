"""Run discovery (saekit.runs) and the `saekit app` launcher, on hand-built run directories."""

import json
from pathlib import Path

import pytest

import saekit
from saekit.app_launcher import AppNotFoundError, app_command, find_app_dir, launch_app
from saekit.config import SaeConfig, TrainConfig, save_config, to_dict
from saekit.errors import RunDirError
from saekit.runs import (
    eval_headline,
    eval_levels,
    eval_table_rows,
    list_runs,
    load_eval,
    load_metrics,
    method_name,
    run_model_name,
    runs_table,
)

REPO_APP = Path(__file__).resolve().parents[1] / "app"


def make_run(path: Path, *, final: bool = True, k: int = 4, method: str = "topk", model_id="tiny"):
    path.mkdir(parents=True)
    cfg = TrainConfig(
        sae=SaeConfig.make(method, k=k, d_sae=32),
        cache_dir=str(path / "no-cache"),
        run_dir=str(path),
        total_tokens=1000,
    )
    save_config(cfg, path / "config.yaml")
    sae_dir = path / "final" if final else path / "checkpoints" / "step_0000002" / "sae"
    sae_dir.mkdir(parents=True)
    (sae_dir / "cfg.json").write_text(json.dumps({"model_id": model_id}))
    return path


def test_list_runs_finds_nested_unfinished_and_broken_runs(tmp_path):
    make_run(tmp_path / "demo" / "topk")
    make_run(tmp_path / "b_unfinished", final=False)
    broken = make_run(tmp_path / "c_broken")
    (broken / "config.yaml").write_text("sae: {k: [not, an, int]}\n")
    (tmp_path / "cache" / "blocks.0.hook_resid_post").mkdir(parents=True)  # a cache, not a run
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.yaml").write_text("a config without a checkpoint is not a run\n")
    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["b_unfinished", "c_broken", "demo/topk"]
    unfinished, broken_run, done = runs
    assert done.finished and not unfinished.finished and done.error is None
    assert done.config["sae"]["method"] == "topk" and done.config["sae"]["params"]["k"] == 4
    assert broken_run.error and "k" in broken_run.error and broken_run.config == {}
    table = runs_table(runs)
    assert [row["status"] for row in table] == [
        "training, no eval, no index",
        "broken config",
        "finished, no eval, no index",
    ]


def test_a_run_dir_given_as_runs_dir_is_the_only_run(tmp_path):
    run = make_run(tmp_path / "solo")
    assert [(r.name, r.path) for r in list_runs(run)] == [(".", run)]


def test_missing_and_empty_runs_dirs_say_what_to_do(tmp_path):
    with pytest.raises(RunDirError, match="does not exist.*saekit app runs"):
        list_runs(tmp_path / "nope")
    with pytest.raises(RunDirError, match="no runs under .*saekit train"):
        list_runs(tmp_path)


def test_metrics_skip_a_half_written_line(tmp_path):
    run = make_run(tmp_path / "r")
    (run / "metrics.jsonl").write_text('{"step": 1, "tokens": 10}\n\n{"step": 2, "tok')
    assert load_metrics(run) == [{"step": 1, "tokens": 10}]
    assert load_metrics(tmp_path) == []


def test_eval_loading_summaries_and_table(tmp_path):
    run = make_run(tmp_path / "r")
    assert load_eval(run) is None and eval_headline(None)["fvu"] is None
    result = {
        "sae": {"d_sae": 32},
        "cached": {"fvu": 0.5, "l0_mean": 3.0, "dead_fraction": 0.25},
        "heldout": {"fvu": 0.4, "l0_mean": 4.0, "dead_fraction": 0.125},
        "splice": {"ce_recovered": {"zero_ablation": 0.9}, "kl": {"sae": 0.01}, "ce_loss": {"clean": 2.0}},
    }
    (run / "eval.json").write_text(json.dumps(result))
    assert eval_headline(load_eval(run)) == {
        "fvu": 0.4,
        "l0": 4.0,
        "dead_fraction": 0.125,
        "ce_recovered": 0.9,
        "kl": 0.01,
    }
    (row,) = runs_table(list_runs(tmp_path))
    assert (row["FVU"], row["L0"], row["dead %"], row["CE recovered"], row["d_sae"]) == (
        0.4,
        4.0,
        12.5,
        0.9,
        32,
    )
    rows = {r["metric"]: r for r in eval_table_rows(result)}
    assert rows["FVU"]["cached"] == 0.5 and rows["FVU"]["heldout"] == 0.4
    assert rows["dead latents %"]["heldout"] == 12.5
    assert rows["CE (clean)"]["heldout"] == 2.0
    (run / "eval.json").write_text("{not json")
    with pytest.raises(RunDirError, match="saekit eval"):
        load_eval(run)


@pytest.mark.parametrize(
    "result",
    [
        {
            "levels": {
                "kind": "prefix",
                "method": "matryoshka",
                "levels": [8, 16],
                "fvu": [0.5, 0.3],
                "l0": [2.0, 3.0],
                "rows": 9,
                "definition": "FVU = ...",
            }
        },
        {"levels": {"kind": "prefix", "widths": [8, 16], "fvu": [0.5, 0.3], "l0": [2.0, 3.0], "rows": 9}},
        {"levels": [{"level": 8, "fvu": 0.5}, {"level": 16, "fvu": 0.3}]},
        {"heldout": {"per_k": {"8": {"fvu": 0.5}, "16": {"fvu": 0.3}}}},
        {"per_prefix": {"kind": "prefix", "rows": [{"prefix": 8, "fvu": 0.5}, {"prefix": 16, "fvu": 0.3}]}},
    ],
)
def test_eval_levels_accepts_the_likely_layouts(result):
    assert [(r["level"], r["fvu"]) for r in eval_levels(result)] == [(8, 0.5), (16, 0.3)]


def test_eval_levels_absent():
    assert eval_levels(None) == [] and eval_levels({"heldout": {"fvu": 1.0}, "levels": "n/a"}) == []


def test_method_names():
    assert method_name({"sae": {"method": "batchtopk", "params": {"k": 32}}}) == "batchtopk"
    assert (
        method_name({"sae": {"method": "matryoshka", "params": {"activation": "topk"}}})
        == "matryoshka (topk)"
    )
    # The same labels from real resolved configs (what list_runs hands to method_name).
    batchtopk = TrainConfig(sae=SaeConfig.make("batchtopk", k=8), cache_dir="c")
    matryoshka = TrainConfig(sae=SaeConfig.make("matryoshka", k=8, activation="topk"), cache_dir="c")
    assert method_name(to_dict(batchtopk)) == "batchtopk"
    assert method_name(to_dict(matryoshka)) == "matryoshka (topk)"


def test_model_name_falls_back_to_the_sae_record_when_the_cache_is_gone(tmp_path):
    assert run_model_name(make_run(tmp_path / "a")) == "tiny"
    assert run_model_name(make_run(tmp_path / "b", model_id="embedded:SmolLM2-135M@1")) == "embedded"


# ---------------------------------------------------------------------------------------- launcher


def test_app_command_is_local_quiet_and_points_at_the_runs(tmp_path):
    argv, env, cwd = app_command(tmp_path, port=8765)
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("--server.port") + 1] == "8765"
    assert argv[argv.index("--server.headless") + 1] == "true"
    assert argv[argv.index("--browser.gatherUsageStats") + 1] == "false"
    assert argv[argv.index("--server.fileWatcherType") + 1] == "none"
    assert argv[-2:] == ["--runs-dir", str(tmp_path.resolve())]
    assert env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] == "false"
    assert cwd == REPO_APP and (cwd / ".streamlit" / "config.toml").is_file()


def test_app_dir_lookup_and_its_error(tmp_path, monkeypatch):
    assert find_app_dir() == REPO_APP
    other = tmp_path / "myapp"
    other.mkdir()
    (other / "streamlit_app.py").write_text("")
    monkeypatch.setenv("SAEKIT_APP_DIR", str(other))
    assert find_app_dir() == other
    monkeypatch.setenv("SAEKIT_APP_DIR", str(tmp_path / "missing"))
    monkeypatch.setattr(saekit, "__file__", str(tmp_path / "site" / "saekit" / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AppNotFoundError, match="SAEKIT_APP_DIR"):
        find_app_dir()


def test_launch_checks_the_runs_dir_before_starting(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("subprocess.run", lambda argv, **kw: calls.append((argv, kw)) or _Done())
    with pytest.raises(RunDirError):
        launch_app(tmp_path / "nope")
    assert calls == []
    make_run(tmp_path / "runs" / "r")
    assert launch_app(tmp_path / "runs", port=9999) == 0
    ((argv, kw),) = calls
    assert "9999" in argv and kw["env"]["SAEKIT_RUNS_DIR"] == str((tmp_path / "runs").resolve())


class _Done:
    returncode = 0
