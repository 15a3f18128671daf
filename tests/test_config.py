"""Config loading: YAML + dotted overrides, typo suggestions, type checks, round trip, --help listings."""

from pathlib import Path

import pytest

from saekit.config import (
    CollectConfig,
    SaeConfig,
    TrainConfig,
    load_config,
    load_saved_config,
    save_config,
)
from saekit.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_and_overrides_are_applied():
    cfg = load_config(
        TrainConfig, CONFIGS / "topk.yaml", ["sae.k=64", "lr=3e-4", "hookpoint=blocks.3.hook_mlp_out"]
    )
    assert cfg.sae.params.k == 64
    assert cfg.lr == pytest.approx(3e-4)
    assert cfg.hookpoint == "blocks.3.hook_mlp_out"
    assert cfg.sae.expansion_factor == 8  # untouched value from the file


def test_unknown_key_suggests_closest_name():
    with pytest.raises(ConfigError, match="did you mean 'sae.k_aux'"):
        load_config(TrainConfig, None, ["sae.kaux=3"])
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(TrainConfig, None, ["batchsize=3"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("batch_size=abc", "batch_size must be of type int"),
        ("sae.init_b_dec=median", "must be one of"),
        ("sae.k=0", "k: must be a positive"),
        ("progress=3", "progress must be of type bool"),
    ],
)
def test_wrong_values_are_rejected_with_the_field_name(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(TrainConfig, None, [override])


def test_missing_file_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainConfig, None, ["sae.k"])


def test_hookpoints_accept_a_single_string_and_lists():
    assert load_config(CollectConfig, None, ["hookpoints=blocks.0.hook_resid_post"]).hookpoints == (
        "blocks.0.hook_resid_post",
    )
    cfg = load_config(CollectConfig, None, ["hookpoints=[a, b]"])
    assert cfg.hookpoints == ("a", "b")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(TrainConfig, CONFIGS / "topk.yaml", ["sae.k=16", "adam_betas=[0.8, 0.9]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_saved_config(TrainConfig, tmp_path / "config.yaml") == cfg


def test_derived_numbers():
    sae = SaeConfig.make("topk", k=32)
    assert sae.resolve_d_sae(576) == 8 * 576
    assert sae.params.resolve_k_aux(576) == 288
    cfg = TrainConfig(total_tokens=10_000, batch_size=1000)
    assert cfg.total_steps == 10
    assert cfg.resolve_lr(2**14) == pytest.approx(2e-4)
    assert cfg.resolve_lr(2**16) == pytest.approx(1e-4)


def test_every_shipped_config_loads():
    from saekit.config import STAGE_CONFIGS

    kinds = {stage: STAGE_CONFIGS[stage] for stage in ("collect", "compare", "demo", "study")}
    for path in sorted(CONFIGS.rglob("*.yaml")):  # configs/study_gsae/ holds a study's method YAMLs
        cls = next((c for key, c in kinds.items() if key in path.stem), TrainConfig)
        cfg = load_config(cls, path)
        for method in getattr(cfg, "methods", ()):  # compare/study configs name YAMLs that must exist
            load_config(TrainConfig, CONFIGS.parent / method)


def test_every_method_has_a_shipped_config():
    from saekit.sae import METHODS

    methods = {
        load_config(TrainConfig, p).sae.method
        for p in CONFIGS.glob("*.yaml")
        if not any(stage in p.stem for stage in ("collect", "compare", "demo", "study"))
    }
    assert set(METHODS) <= methods


@pytest.mark.parametrize("stage", ["collect", "train", "eval", "index", "compare", "demo", "bench"])
def test_stage_help_lists_every_key_with_default_and_doc(stage, capsys):
    import dataclasses

    from saekit.cli import main
    from saekit.config import STAGE_CONFIGS
    from saekit.config_help import field_docs

    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    cls = STAGE_CONFIGS[stage]
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or f.name == "sae":
            continue
        listed = f"  {f.name} = " in text or f"  {f.name}." in text  # a section lists its own keys
        assert listed, f"{stage} --help lacks {f.name}"
        assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
    if stage == "train":  # shared SAE keys and every method's own keys
        assert "  sae.expansion_factor = 8" in text and "  sae.target_l0 = 32.0" in text
        assert "jumprelu: " in text and "matryoshka: " in text


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["bench", "d_sae=abc"], "d_sae[0] must be of type int"),
        (["bench", "method=nope"], None),
        (["index", "runs/none", "num_sequences=abc"], "num_sequences must be of type int"),
        (["index", "runs/none", "bogus=1"], "unknown config key 'bogus'"),
    ],
)
def test_every_stage_parses_overrides_with_the_one_loader(argv, fragment, caplog):
    from saekit.cli import main

    code = main(argv)
    assert code == 2
    if fragment:
        assert fragment in caplog.text


def test_list_keys_accept_comma_separated_values():
    from saekit.config import BenchConfig

    assert load_config(BenchConfig, None, ["d_sae=4096,8192", "k=32"]).d_sae == (4096, 8192)
    assert load_config(BenchConfig, None, ["k=16"]).k == (16,)
