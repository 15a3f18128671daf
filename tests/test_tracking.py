"""Optional trackers: a clear error when the package is missing, and the rows they receive (fake modules)."""

import json
import sys
import types

import pytest
from fixtures_run import collect_tiny_cache

from saekit.config import SaeConfig, TrainConfig
from saekit.config_train import LogConfig
from saekit.errors import ConfigError
from saekit.train import train
from saekit.train.tracking import wandb_run_id


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return collect_tiny_cache(tmp_path_factory.mktemp("cache"), max_tokens=1500, shard_tokens=500)


def _cfg(cache, run_dir, log):
    return TrainConfig(
        sae=SaeConfig.make("topk", k=4, expansion_factor=2, dead_tokens=300),
        cache_dir=str(cache),
        run_dir=str(run_dir),
        total_tokens=128 * 4,
        batch_size=128,
        log_every=2,
        checkpoint_every=3,
        norm_estimation_tokens=512,
        shuffle_buffer_tokens=1000,
        progress=False,
        log=log,
    )


@pytest.mark.parametrize(
    ("module", "log", "package"),
    [
        ("wandb", LogConfig(wandb=True), "wandb"),
        ("torch.utils.tensorboard", LogConfig(tensorboard=True), "tensorboard"),
    ],
)
def test_missing_package_is_a_one_line_error_before_anything_is_written(
    tiny_cache, tmp_path, monkeypatch, module, log, package
):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError, as when not installed
    with pytest.raises(ConfigError, match=f"pip install {package}") as err:
        train(_cfg(tiny_cache, tmp_path / "run", log))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


class _FakeWandbRun:
    def __init__(self, calls):
        self.calls = calls

    def log(self, row, step):
        self.calls["log"].append((step, row))

    def finish(self):
        self.calls["finished"] = True


def _fake_modules():
    calls = {"log": [], "scalars": [], "finished": False, "closed": False}
    wandb = types.ModuleType("wandb")

    def init(**kwargs):
        calls["init"] = kwargs
        return _FakeWandbRun(calls)

    wandb.init = init
    tensorboard = types.ModuleType("torch.utils.tensorboard")

    class SummaryWriter:
        def __init__(self, log_dir):
            calls["log_dir"] = log_dir

        def add_scalar(self, key, value, global_step):
            calls["scalars"].append((global_step, key, value))

        def flush(self):
            pass

        def close(self):
            calls["closed"] = True

    tensorboard.SummaryWriter = SummaryWriter
    return calls, wandb, tensorboard


def test_trackers_receive_every_metrics_row(tiny_cache, tmp_path, monkeypatch):
    calls, wandb, tensorboard = _fake_modules()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tensorboard)
    log = LogConfig(wandb=True, wandb_mode="offline", wandb_project="p", tensorboard=True)
    run = train(_cfg(tiny_cache, tmp_path / "run", log))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    init = calls["init"]
    assert init["mode"] == "offline" and init["project"] == "p" and init["id"] == wandb_run_id(run)
    assert init["config"]["sae"]["method"] == "topk" and init["dir"] == str(run)
    assert [step for step, _ in calls["log"]] == [r["step"] for r in rows]
    for (_, logged), row in zip(calls["log"], rows, strict=True):
        assert logged == pytest.approx({k: float(v) for k, v in row.items()})
    fvu = [(step, value) for step, key, value in calls["scalars"] if key == "fvu"]
    assert fvu == [(r["step"], pytest.approx(r["fvu"])) for r in rows]
    assert calls["log_dir"] == str(run / "tensorboard")
    assert calls["finished"] and calls["closed"]
