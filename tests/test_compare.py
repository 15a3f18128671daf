"""`saekit compare`: several methods on one cache at equal L0 → one table + compare.json."""

import json
from pathlib import Path

from saekit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_compare_trains_every_method_at_equal_l0(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert (
        main(
            ["collect", str(ROOT / "configs/tiny_collect_grads.yaml"), f"out_dir={cache}", "max_tokens=1500"]
        )
        == 0
    )
    methods = [str(ROOT / f"configs/tiny_{name}.yaml") for name in ("topk", "batchtopk", "gsae")]
    out = tmp_path / "compare"
    args = [
        "compare",
        f"methods=[{', '.join(methods)}]",
        f"cache_dir={cache}",
        "k=4",
        "expansion_factor=2",
        "total_tokens=1024",
        "batch_size=256",
        "eval_sequences=2",
        f"out_dir={out}",
        "progress=false",
        "hookpoint=blocks.1.hook_resid_post",
    ]
    assert main(args) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["tiny_topk", "tiny_batchtopk", "tiny_gsae"]
    assert [r["sae_method"] for r in rows] == ["topk", "batchtopk", "gsae"]
    for row in rows:
        assert row["l0"] <= 4 + 1e-6 or row["sae_method"] == "batchtopk"
        assert 0 <= row["fvu"] < 2 and row["ce_recovered"] is not None
        assert Path(row["run_dir"], "final", "sae.safetensors").is_file()
    assert rows[0]["step_time_vs_topk"] == 1.0
    assert "tiny_batchtopk" in capsys.readouterr().out
    # The methods trained together from one pass over the cache: the group's config lists them all.
    from saekit.rundir import RunDir

    group = RunDir(out).load_config()
    assert [m.name for m in group.members] == ["tiny_topk", "tiny_batchtopk", "tiny_gsae"]
    for row, member in zip(rows, group.members, strict=True):
        assert RunDir(row["run_dir"]).load_config().sae == member.sae
    # A second call re-evaluates without retraining (final/ exists): weights are untouched.
    before = (out / "tiny_topk/final/sae.safetensors").read_bytes()
    assert main(args) == 0
    assert (out / "tiny_topk/final/sae.safetensors").read_bytes() == before


def test_gsae_is_skipped_without_gradients(tmp_path):
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "collect",
                str(ROOT / "configs/tiny_collect.yaml"),
                f"out_dir={cache}",
                "max_tokens=800",
                "hookpoints=[blocks.1.hook_resid_post]",
            ]
        )
        == 0
    )
    out = tmp_path / "compare"
    assert (
        main(
            [
                "compare",
                f"methods=[{ROOT / 'configs/tiny_gsae.yaml'}]",
                f"cache_dir={cache}",
                "k=4",
                "expansion_factor=2",
                "total_tokens=512",
                "batch_size=256",
                f"out_dir={out}",
                "progress=false",
            ]
        )
        == 0
    )
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [(r["method"], r.get("skipped")) for r in rows] == [("tiny_gsae", "cache has no gradients")]


def test_method_config_forces_the_shared_settings():
    from saekit.compare import CompareConfig, method_config

    cfg = CompareConfig(
        cache_dir="c",
        k=7,
        expansion_factor=3,
        total_tokens=999,
        batch_size=33,
        threshold_ema=0.2,
        out_dir="o",
    )
    train_cfg = method_config(cfg, str(ROOT / "configs/matryoshka.yaml"))
    sae = train_cfg.sae
    assert (sae.params.k, sae.expansion_factor, sae.params.threshold_ema) == (7, 3, 0.2)
    assert (train_cfg.total_tokens, train_cfg.batch_size, train_cfg.cache_dir) == (999, 33, "c")
    assert train_cfg.run_dir == str(Path("o") / "matryoshka") and train_cfg.sae.method == "matryoshka"
    msae = method_config(cfg, str(ROOT / "configs/msae.yaml"))
    assert msae.sae.method == "msae" and msae.sae.params.k_levels == (7,)
    untouched = method_config(CompareConfig(), str(ROOT / "configs/batchtopk.yaml"))
    assert untouched.sae.params.threshold_ema == 0.01
