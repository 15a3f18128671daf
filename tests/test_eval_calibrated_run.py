"""`saekit eval` end to end on the tiny model: held-out split, threshold calibration and the extras."""

import json

import pytest
from fixtures_run import HOOK, collect_tiny_cache

from saekit.config import EvalConfig, SaeConfig, TrainConfig
from saekit.eval import evaluate_run, format_eval_table


@pytest.fixture(scope="module")
def batchtopk_run(tmp_path_factory):
    from saekit.models import load_model
    from saekit.train import train

    root = tmp_path_factory.mktemp("calibrated")
    model = load_model("tiny")
    cache = collect_tiny_cache(root / "cache", max_tokens=2000, model=model)
    sae = SaeConfig.make("batchtopk", k=4, d_sae=64)
    cfg = TrainConfig(
        sae=sae,
        cache_dir=str(cache),
        hookpoint=HOOK,
        run_dir=str(root / "run"),
        total_tokens=1024,
        batch_size=128,
        norm_estimation_tokens=500,
        shuffle_buffer_tokens=500,
        progress=False,
    )
    train(cfg)
    return model, root / "run"


def test_eval_calibrates_thresholds_and_reports_target_and_extras(batchtopk_run):
    model, run = batchtopk_run
    cfg = EvalConfig(
        num_sequences=4,
        batch_size=4,
        max_eval_rows=400,
        calibrate="heldout",
        calibration_rows=600,
        seed_pair=str(run),
        absorption=True,
    )
    result = evaluate_run(run, cfg, model=model)
    assert result["settings"]["heldout"]["corpus"] == "embedded:heldout"  # never-trained documents
    assert result["settings"]["heldout"]["skipped_sequences"] == 0
    target = result["sparsity_target"]
    assert target["target_l0"] == 4.0
    cal = target["calibration"]
    assert cal["estimator"] == "global_quantile" and cal["rows"] == 600
    assert cal["l0_after"] == pytest.approx(4.0, rel=0.02)
    assert "embedded:heldout" in cal["source"]
    extras = result["extras"]
    assert 0 < extras["shrinkage"]["l2_ratio"] < 2 and extras["rows"] == result["heldout"]["rows"]
    assert extras["prefix_fvu"]["widths"][-1] == 64
    assert extras["seed_consistency"]["matched_mean_cosine"] == pytest.approx(1.0)  # paired with itself
    assert set(extras["duplicate_latents"]) >= {"decoder", "encoder"}
    assert extras["absorption"]["eval_type_id"] == "absorption_first_letter"
    assert extras["absorption"]["eval_result_details"]  # the tiny tokenizer has enough words per letter
    table = format_eval_table(result)
    assert "L0 target (θ calibrated)" in table and "L2 ratio" in table
    assert json.loads((run / "eval.json").read_text())["sparsity_target"]["target_l0"] == 4.0


def test_uncalibrated_eval_keeps_the_trained_threshold(batchtopk_run):
    model, run = batchtopk_run
    result = evaluate_run(run, EvalConfig(num_sequences=2, batch_size=2, max_eval_rows=200), model=model)
    assert result["sparsity_target"]["calibration"] is None
    table = format_eval_table(result)
    assert "L0 target" in table and "calibrated" not in table


def test_saved_calibration_reaches_the_checkpoint_and_keeps_the_trained_threshold(batchtopk_run, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    from saekit.errors import ConfigError
    from saekit.rundir import RunDir

    model, trained_run = batchtopk_run
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the module's run stays uncalibrated for the other tests
    trained = RunDir(run).load_sae().threshold.detach().clone()
    cfg = EvalConfig(
        num_sequences=2, batch_size=2, max_eval_rows=200, calibrate="heldout", calibration_rows=600,
        save_calibration=True,
    )  # fmt: skip
    report = evaluate_run(run, cfg, model=model)["sparsity_target"]["calibration"]
    saved = RunDir(run).load_sae()
    assert not torch.equal(saved.threshold, trained)  # what index, app and export now load
    assert saved.extra_cfg["calibration"]["l0_after"] == pytest.approx(report["l0_after"])
    kept = run / "threshold_trained.safetensors"
    assert torch.equal(load_file(str(kept))["threshold"], trained)
    evaluate_run(run, cfg, model=model)  # a second calibration never overwrites the trained θ
    assert torch.equal(load_file(str(kept))["threshold"], trained)
    with pytest.raises(ConfigError, match="save_calibration"):
        EvalConfig(save_calibration=True)
