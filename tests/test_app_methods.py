"""A method added as one module shows up everywhere: a JumpReLU run is trained from its YAML, evaluated,
indexed, and every app page renders it without an exception."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from saekit.cli import main

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app" / "streamlit_app.py"


@pytest.fixture(scope="module")
def jumprelu_runs(bad_input_template, tmp_path_factory):
    runs = tmp_path_factory.mktemp("jumprelu_runs")
    run = runs / "jr"
    argv = [
        "train",
        str(ROOT / "configs" / "tiny_jumprelu.yaml"),
        f"cache_dir={bad_input_template / 'cache'}",
        f"run_dir={run}",
        "total_tokens=1024",
        "batch_size=128",
        "norm_estimation_tokens=512",
        "shuffle_buffer_tokens=512",
        "progress=false",
    ]
    assert main(argv) == 0
    assert main(["eval", str(run), "num_sequences=4", "batch_size=2", "max_eval_rows=512"]) == 0
    index = ["index", str(run), "num_sequences=6", "batch_size=3", "compute_output_scores=false"]
    assert main(index) == 0
    return runs


@pytest.mark.parametrize("page", [None, "latents", "steering", "dead_latents", "compare"])
def test_every_page_renders_a_jumprelu_run(jumprelu_runs, page, monkeypatch):
    at = AppTest.from_file(str(APP), default_timeout=120)
    monkeypatch.setenv("SAEKIT_RUNS_DIR", str(jumprelu_runs))  # the app serves only its start directory
    at.session_state["app_run"] = "jr"
    at.run()
    if page is not None:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    if page is None:
        assert "jumprelu" in str([t.value for t in at.dataframe]) + str([m.value for m in at.markdown])
