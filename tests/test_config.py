"""Config loading: YAML + dotted overrides, typo suggestions, type checks, round trip."""

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
    assert cfg.sae.k == 64
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
    sae = SaeConfig(k=32)
    assert sae.resolve_d_sae(576) == 8 * 576
    assert sae.resolve_k_aux(576) == 288
    cfg = TrainConfig(total_tokens=10_000, batch_size=1000)
    assert cfg.total_steps == 10
    assert cfg.resolve_lr(2**14) == pytest.approx(2e-4)
    assert cfg.resolve_lr(2**16) == pytest.approx(1e-4)


def test_every_shipped_config_loads():
    from saekit.compare import CompareConfig
    from saekit.demo import DemoConfig

    kinds = {"collect": CollectConfig, "compare": CompareConfig, "demo": DemoConfig}
    for path in sorted(CONFIGS.glob("*.yaml")):
        cls = next((c for key, c in kinds.items() if key in path.stem), TrainConfig)
        load_config(cls, path)
