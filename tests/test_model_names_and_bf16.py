"""Model names resolved without the network, offline mode by default, and the bf16 encoder GEMM only where
bf16 is native (the probe is monkeypatched, so both paths run on any CPU)."""

import logging
import os
import socket
import subprocess
import sys

import pytest
import torch

import saekit.models.loading as loading
import saekit.sae.precision as precision
from saekit.config import SaeConfig
from saekit.errors import ModelLoadError
from saekit.models import load_model, model_id
from saekit.models.offline import apply_offline_default, offline_mode
from saekit.sae import Sae
from saekit.sae.methods.gsae import default_score_dtype

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def user_left_offline_unset(monkeypatch):
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("tinny", "did you mean 'tiny'?"),
        ("TINY", "did you mean 'tiny'?"),
        ("embeded", "did you mean 'embedded'?"),
        ("qwerty", "not a hub id (org/name)"),
        ("./no/such/dir", "does not exist"),
        ("   ", "is empty"),
    ],
)
def test_names_that_are_no_model_fail_at_once_without_network(
    name, fragment, no_network, user_left_offline_unset
):
    with pytest.raises(ModelLoadError) as info:
        load_model(name)
    assert fragment in str(info.value)


def test_offline_is_the_default_and_a_hub_id_is_not_probed(no_network, user_left_offline_unset):
    with pytest.raises(ModelLoadError, match=r"HF_HUB_OFFLINE=0 to download"):
        load_model("saekit-test-org/no-such-model")
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_a_users_choice_of_online_is_kept_and_the_hub_is_probed(monkeypatch, user_left_offline_unset):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    apply_offline_default()
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "TRANSFORMERS_OFFLINE" not in os.environ
    assert not offline_mode()
    probes = []
    monkeypatch.setattr(loading, "_hub_reachable", lambda: probes.append(1) or False)
    with pytest.raises(ModelLoadError, match="hub is unreachable"):
        load_model("saekit-test-org/no-such-model")
    assert probes == [1]
    with pytest.raises(ModelLoadError, match="did you mean 'tiny'"):
        load_model("tinny")  # a typo is never sent to the hub, online or not
    assert probes == [1]


def test_importing_saekit_models_sets_offline_before_huggingface_hub_reads_it():
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    code = "import saekit.models, huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    env["HF_HUB_OFFLINE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_cached_hub_model_loads_offline_from_its_snapshot(tmp_path, monkeypatch, no_network):
    """A hub id present in the local HF cache loads offline, from the snapshot directory."""
    import huggingface_hub.constants
    from transformers import LlamaConfig, LlamaForCausalLM

    from saekit.models.tiny import load_tiny_tokenizer

    tok = load_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    snapshot = tmp_path / "hub" / "models--saekit-test--toy" / "snapshots" / "abc123"
    LlamaForCausalLM(config).save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("saekit-test/toy")
    assert model_id(model) == "saekit-test/toy" and model.cfg.d_model == 32


# ---------------------------------------------------------------------------------------- bf16


@pytest.fixture
def native(monkeypatch):
    """Set what the probe answers; the fallback warning is reset."""
    monkeypatch.setattr(precision, "_WARNED", set())

    def answer(value: bool) -> None:
        monkeypatch.setattr(precision, "native_bf16_gemm", lambda device: value)

    return answer


def _pair():
    exact = Sae(32, SaeConfig.make("topk", k=4, d_sae=128))
    fast = Sae(32, SaeConfig.make("topk", k=4, d_sae=128, encoder_bf16=True))
    fast.load_state_dict(exact.state_dict())
    return exact, fast


def test_without_native_bf16_the_encoder_gemm_stays_fp32_with_one_warning(native, caplog):
    native(False)
    exact, fast = _pair()
    x = torch.randn(16, 32)
    with caplog.at_level(logging.WARNING, logger="saekit"):
        got = fast.dense_pre_acts(x)
        fast.dense_pre_acts(x, latent_major=True)
        Sae(32, fast.cfg).dense_pre_acts(x)  # another SAE: still one warning per process
    assert torch.equal(got, exact.dense_pre_acts(x))  # bit-identical: fp32 ran
    assert fast.encoder_gemm_ran == torch.float32
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no native bf16" in warnings[0] and "4.6x slower" in warnings[0]


def test_with_native_bf16_the_encoder_gemm_runs_in_bf16_silently(native, caplog):
    native(True)
    exact, fast = _pair()
    x = torch.randn(16, 32)
    with caplog.at_level(logging.WARNING, logger="saekit"):
        got = fast.dense_pre_acts(x)
    assert fast.encoder_gemm_ran == torch.bfloat16 and not caplog.records
    assert not torch.equal(got, exact.dense_pre_acts(x)) and exact.encoder_gemm_ran == torch.float32


def test_an_sae_without_encoder_bf16_never_asks_the_probe(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16_gemm", lambda d: pytest.fail("probed"))
    exact, _ = _pair()
    exact.dense_pre_acts(torch.randn(4, 32))
    assert exact.encoder_gemm_ran == torch.float32


def test_gsae_score_dtype_uses_the_shared_probe(monkeypatch):
    import saekit.sae.methods.gsae as gsae

    for value, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(gsae, "native_bf16_gemm", lambda device, v=value: v)
        assert default_score_dtype(torch.device("cpu")) == dtype


def test_the_real_probe_answers_a_bool_once_per_device_type(monkeypatch):
    monkeypatch.setattr(precision, "_NATIVE", {})
    first = precision.native_bf16_gemm("cpu")
    assert isinstance(first, bool)
    assert {"cpu": first} == precision._NATIVE
    monkeypatch.setattr(precision, "_probe", lambda device: pytest.fail("probed twice"))
    assert precision.native_bf16_gemm(torch.device("cpu")) is first


def test_bench_reports_the_bf16_path_when_it_is_native(native, capsys):
    from saekit.cli import main

    native(True)
    args = ["bench", "bf16=true", "d_in=32", "d_sae=256", "k=4", "batch=32", "reps=1", "threads=1"]
    assert main([*args, "memory=false", "dense=false"]) == 0
    assert "encoder GEMM ran in: bf16" in capsys.readouterr().out
