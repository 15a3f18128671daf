"""`saekit index` keys: IndexConfig is the one place they are declared (build_index takes exactly those), and
every stage's --help lists every key of its config with a default and a doc."""

import dataclasses

import pytest

from saekit.analysis.build import _index_config
from saekit.config import STAGE_CONFIGS, IndexConfig, load_config
from saekit.config_help import field_docs
from saekit.errors import ConfigError


def test_index_keys_from_yaml_overrides_reach_the_builder():
    cfg = load_config(IndexConfig, None, ["context_window=[8,2]", "prompts=[Hello there,I think]"])
    assert cfg.context_window == (8, 2) and cfg.prompts == ("Hello there", "I think")
    merged = _index_config(cfg, {"output_amp": 4.0})
    assert merged.output_amp == 4.0 and merged.context_window == (8, 2)


def test_unknown_index_key_is_a_one_line_error_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown key.*num_sequences"):
        _index_config(None, {"num_sequence": 4})


@pytest.mark.parametrize(
    "override, key",
    [("output_batch_size=0", "output_batch_size"), ("context_window=[-1,2]", "context_window"),
     ("prompts=[]", "prompts"), ("output_amp=0", "output_amp")],
)  # fmt: skip
def test_bad_index_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(IndexConfig, None, [override])


@pytest.mark.parametrize("stage", sorted(STAGE_CONFIGS))
def test_every_stage_help_lists_every_key_with_a_doc(stage, capsys):
    from saekit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    cls = STAGE_CONFIGS[stage]
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        factory = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        default = factory() if factory else f.default
        if f.name == "sae" or dataclasses.is_dataclass(default):
            continue  # nested sections are listed key by key (sae.k, log.wandb, ...)
        assert f"  {f.name} = " in text, f"{stage} --help lacks {f.name}"
        assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
