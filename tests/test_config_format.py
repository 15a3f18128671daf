"""Versioned formats: runs written by saekit's format 1 (flat `sae` with `activation` + `objective`) still
load, with the same method and the same reconstructions, and their configs are patched explicitly.

tests/fixtures/v1_runs/ holds small runs (config.yaml, metrics.jsonl, final/) written by the format-1 code,
and expected.safetensors the reconstructions that code computed for a fixed input.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from saekit.config import SaeConfig, TrainConfig, load_config, load_saved_config
from saekit.config_io import FORMAT_VERSION
from saekit.errors import ConfigError
from saekit.rundir import RunDir
from saekit.sae import Sae
from saekit.sae.config import upgrade_sae_v1
from saekit.sae.methods.gsae import WithGradients

V1_RUNS = Path(__file__).parent / "fixtures" / "v1_runs"
EXPECTED_METHOD = {
    "topk": "topk",
    "feature_choice": "feature_choice",
    "gsae": "gsae",
    "matryoshka_sampled": "matryoshka",
    "msae": "msae",
    "mp_sae": "mp",
    "aux_zipf": "aux_zipf",
}


@pytest.fixture(scope="module")
def expected():
    return load_file(str(V1_RUNS / "expected.safetensors"))


@pytest.mark.parametrize("name", sorted(EXPECTED_METHOD))
def test_format1_runs_load_with_their_method_and_reconstruct_identically(name, expected):
    run = RunDir(V1_RUNS / name)
    assert yaml.safe_load(run.config_path.read_text())["format_version"] == 1
    cfg = run.load_config()
    assert cfg.sae.method == EXPECTED_METHOD[name]
    sae = run.load_sae()
    assert sae.cfg == cfg.sae  # cfg.json and config.yaml agree once both are upgraded
    torch.testing.assert_close(sae.reconstruct(expected["x"]), expected[f"{name}.x_hat"], rtol=0, atol=0)
    if name == "gsae":  # gradient-selected reconstructions too
        fed = WithGradients(sae, [(expected["x"], expected["grads"])])
        torch.testing.assert_close(fed.reconstruct(expected["x"]), expected["gsae.x_hat_grad"])


def test_format1_keys_are_patched_explicitly():
    cfg = load_saved_config(TrainConfig, V1_RUNS / "matryoshka_sampled" / "config.yaml")
    assert cfg.sae.params.activation == "batchtopk"  # the old activation became the selection rule
    assert cfg.sae.params.prefix_mode == "sampled" and cfg.sae.params.n_sampled_prefixes == 3
    mp = load_saved_config(TrainConfig, V1_RUNS / "mp_sae" / "config.yaml")
    assert mp.sae.params.steps == 4  # format 1: mp_steps null → T = k
    fc = upgrade_sae_v1({"activation": "feature_choice", "k": 4, "fc_tokens_per_latent": 3, "grad_beta": 2.0})
    assert fc == {"method": "feature_choice", "params": {"k": 4, "tokens_per_latent": 3}}
    softcap = upgrade_sae_v1({"activation": "topk_softcap", "k": 8, "k_aux": 0})  # cfg.json: no objective
    assert softcap["method"] == "msae" and "k_aux" not in softcap["params"]


def test_a_format1_cfg_json_alone_loads_by_its_activation(tmp_path, expected):
    """Without config.yaml a format-1 matryoshka checkpoint loads as its inference rule (BatchTopK)."""
    shutil.copytree(V1_RUNS / "matryoshka_sampled" / "final", tmp_path / "final")
    sae = Sae.load(tmp_path / "final")
    assert sae.cfg.method == "batchtopk"
    torch.testing.assert_close(sae.reconstruct(expected["x"]), expected["matryoshka_sampled.x_hat"])


def test_saving_writes_the_current_format(tmp_path):
    sae = Sae.load(V1_RUNS / "topk" / "final")
    path = sae.save(tmp_path / "resaved")
    raw = json.loads((path / "cfg.json").read_text())
    assert raw["format_version"] == 2 and raw["method"] == "topk" and raw["sae"]["params"]["k"] == 4
    assert Sae.load(path).cfg == sae.cfg


def test_old_style_yaml_gets_a_one_line_fix(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("sae:\n  activation: batchtopk\n  k: 8\nobjective: matryoshka\n")
    with pytest.raises(ConfigError, match="objective"):
        load_config(TrainConfig, old)
    old.write_text("sae:\n  activation: batchtopk\n  k: 8\n")
    with pytest.raises(ConfigError, match="sae.method"):
        load_config(TrainConfig, old)


def test_method_keys_may_sit_under_sae_or_sae_params_and_direct_keys_win(tmp_path):
    flat = load_config(TrainConfig, None, ["sae.method=batchtopk", "sae.k=16", "sae.threshold_ema=0.5"])
    nested = load_config(
        TrainConfig, None, ["sae.method=batchtopk", "sae.params.k=16", "sae.params.threshold_ema=0.5"]
    )
    assert flat.sae == nested.sae == SaeConfig.make("batchtopk", k=16, threshold_ema=0.5)
    assert load_config(TrainConfig, None, ["sae.k=16", "sae.params.k=8"]).sae.params.k == 16
    saved = tmp_path / "saved.yaml"
    from saekit.config import save_config

    save_config(nested, saved)  # writes sae.params.k
    assert load_config(TrainConfig, saved, ["sae.k=2"]).sae.params.k == 2
    with pytest.raises(ConfigError, match="did you mean 'sae.k'"):
        load_config(TrainConfig, None, ["sae.kk=16"])
    with pytest.raises(ConfigError, match="did you mean 'batchtopk'"):
        load_config(TrainConfig, None, ["sae.method=batchtopc"])


def test_a_saved_config_round_trips_through_the_current_format(tmp_path):
    from saekit.config import save_config

    cfg = load_config(TrainConfig, None, ["sae.method=matryoshka", "sae.prefixes=[8, 16]", "sae.k=4"])
    save_config(cfg, tmp_path / "config.yaml")
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert raw["format_version"] == FORMAT_VERSION and raw["sae"]["params"]["prefixes"] == [8, 16]
    assert load_saved_config(TrainConfig, tmp_path / "config.yaml") == cfg


def test_a_newer_format_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"format_version: {FORMAT_VERSION + 1}\n")
    with pytest.raises(ConfigError, match="upgrade saekit"):
        load_saved_config(TrainConfig, path)
