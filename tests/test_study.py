"""`saekit study` end to end on the tiny model: k × seed sweep, study.json, claims, resume."""

import json
from pathlib import Path

import pytest

from saekit.cli import main
from tests.fixtures_run import collect_tiny_cache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return collect_tiny_cache(tmp_path_factory.mktemp("study") / "cache", max_tokens=1500)


def _args(cache, out, *extra):
    methods = [str(ROOT / f"configs/tiny_{name}.yaml") for name in ("topk", "batchtopk")]
    return [
        "study",
        f"methods=[{', '.join(methods)}]",
        "baseline=tiny_topk",
        f"cache_dir={cache}",
        "ks=[2, 4]",
        "seeds=[0, 1]",
        "expansion_factor=2",
        "total_tokens=512",
        "batch_size=256",
        "eval_sequences=2",
        "max_eval_rows=512",
        f"out_dir={out}",
        "progress=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def study_out(tiny_cache, tmp_path_factory):
    """A finished study inside a runs directory (runs/study), with what it printed."""
    out = tmp_path_factory.mktemp("studyruns") / "runs" / "study"
    assert main(_args(tiny_cache, out)) == 0
    return out


def test_study_sweeps_k_and_seed_writes_study_json_and_resumes(tiny_cache, study_out, capsys):
    out = study_out
    study = json.loads((out / "study.json").read_text())
    runs = study["runs"]
    assert [(r["method"], r["k"], r["seed"]) for r in runs] == [
        (m, k, s) for m in ("tiny_topk", "tiny_batchtopk") for k in (2, 4) for s in (0, 1)
    ]
    for run in runs:
        assert Path(run["run_dir"], "final", "sae.safetensors").is_file()
        assert run["fvu"] is not None and run["ce_recovered"] is not None and run["l0"] > 0
        if run["sae_method"] == "topk":
            assert run["l0"] <= run["k"] + 1e-6
    # two seeds train different SAEs
    w0 = (out / "tiny_topk/k2_s0/final/sae.safetensors").read_bytes()
    assert w0 != (out / "tiny_topk/k2_s1/final/sae.safetensors").read_bytes()
    frontier = study["frontiers"]["tiny_batchtopk"]
    assert [p["k"] for p in frontier] == [2, 4] and frontier[0]["fvu"]["n"] == 2
    claims = [c for c in study["claims"] if c["method"] == "tiny_batchtopk"]
    assert {c["claim"] for c in claims} == {
        "lower FVU than TopK at equal L0",
        "higher CE recovered than TopK at equal L0",
    }
    assert all(c["verdict"] in ("holds", "does not hold", "not tested") for c in claims)

    # resume: nothing is retrained or re-evaluated, and the file is rewritten with the same runs
    evals = {p: p.stat().st_mtime_ns for p in out.rglob("eval.json")}
    capsys.readouterr()
    assert main(_args(tiny_cache, out)) == 0
    assert "tiny_batchtopk: lower FVU than TopK at equal L0" in capsys.readouterr().out
    assert (out / "tiny_topk/k2_s0/final/sae.safetensors").read_bytes() == w0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("eval.json")} == evals
    assert json.loads((out / "study.json").read_text())["runs"] == runs

    # train=false assembles the finished runs only: k=8 is left out and nothing is trained
    assert main(_args(tiny_cache, out, "ks=[2, 4, 8]", "train=false")) == 0
    assert json.loads((out / "study.json").read_text())["runs"] == runs
    assert not (out / "tiny_topk" / "k8_s0").exists()


def test_compare_page_shows_the_study_frontiers_and_claims(study_out):
    from app_testing import open_app, plotly_specs, table

    study = json.loads((study_out / "study.json").read_text())
    at = open_app(study_out.parent, "compare")
    traces = {t["name"]: t for t in plotly_specs(at)["compare_study_fvu"]["data"]}
    assert set(traces) == {"tiny_topk", "tiny_batchtopk"}
    points = study["frontiers"]["tiny_batchtopk"]
    assert traces["tiny_batchtopk"]["y"] == pytest.approx([p["fvu"]["mean"] for p in points])
    assert traces["tiny_batchtopk"]["x"] == pytest.approx([p["l0"]["mean"] for p in points])
    assert traces["tiny_batchtopk"]["error_y"]["array"] == pytest.approx([p["fvu"]["spread"] for p in points])
    claims = table(at, "claim", "verdict")
    assert list(claims["verdict"]) == [c["verdict"] for c in study["claims"]]


def test_study_rejects_a_baseline_that_is_not_a_method(tiny_cache, tmp_path, caplog):
    assert main(_args(tiny_cache, tmp_path / "s", "baseline=topk")) == 2
    assert "baseline: 'topk' is not one of the methods" in caplog.text
    assert not (tmp_path / "s").exists()
