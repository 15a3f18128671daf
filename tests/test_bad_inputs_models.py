"""Bad inputs for model names and SAE checkpoints, through the CLI (harness: tests/bad_inputs.py): each
case exits 2 with one line naming the model/file and the fix, and leaves every existing file unchanged.

Also here: the cfg.json memory bomb answered without a large allocation, the memory check, and `saekit
bench bf16=true` on a CPU without native bf16 (a warning, not an error)."""

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from bad_inputs import Case, run_case, write
from safetensors.torch import load_file, save_file

import saekit.sae.checkpoint_checks as checks
import saekit.sae.precision as precision
from saekit.errors import RunDirError
from saekit.sae import Sae, load_sae

FINAL = "run/final"


def edit_cfg(relative: str, **changes) -> Callable[[Path], None]:
    """A setup that rewrites keys of a cfg.json (`sae__d_sae` sets sae.d_sae)."""

    def setup(sandbox: Path) -> None:
        path = sandbox / relative / "cfg.json"
        raw = json.loads(path.read_text())
        for key, value in changes.items():
            *parents, leaf = key.split("__")
            node = raw
            for parent in parents:
                node = node[parent]
            node[leaf] = value
        path.write_text(json.dumps(raw))  # NaN is written as the JSON extension NaN, which json reads back

    return setup


def truncate(relative: str, keep: int) -> Callable[[Path], None]:
    def setup(sandbox: Path) -> None:
        path = sandbox / relative
        path.write_bytes(path.read_bytes()[:keep])

    return setup


def edit_weights(relative: str, change: Callable[[dict], dict]) -> Callable[[Path], None]:
    def setup(sandbox: Path) -> None:
        path = sandbox / relative / "sae.safetensors"
        save_file(change(load_file(str(path))), str(path))

    return setup


def nan_decoder(tensors: dict) -> dict:
    tensors["W_dec"][3, 5] = math.nan
    return tensors


def other_width(tensors: dict) -> dict:
    """The weights of an SAE with 32 latents (cfg.json says 64)."""
    cut = {"W_enc": lambda t: t[:, :32], "W_dec": lambda t: t[:32], "b_enc": lambda t: t[:32]}
    return {name: cut.get(name, lambda t: t)(t).contiguous() for name, t in tensors.items()}


def int_encoder(tensors: dict) -> dict:
    return {**tensors, "W_enc": tensors["W_enc"].to(torch.int32)}


CASES = [
    # ---- model names (item 5): answered from the name alone, no network
    Case("hooks: typo of a built-in model", ["hooks", "tinny"], ("'tinny'", "did you mean 'tiny'")),
    Case("hooks: typo, other case", ["hooks", "Embeded"], ("'Embeded'", "did you mean 'embedded'")),
    Case(
        "collect: model=tinny",
        ["collect", "model=tinny", "out_dir={sandbox}/newcache", "hookpoints=[blocks.1.hook_resid_post]"],
        ("'tinny'", "did you mean 'tiny'"),
    ),
    Case(
        "hooks: missing directory", ["hooks", "{sandbox}/no/such/model"], ("no/such/model", "does not exist")
    ),
    Case("hooks: a file, not a directory", ["hooks", "{run}/config.yaml"], ("config.yaml", "is a file")),
    Case(
        "hooks: hub id offline and not cached",
        ["hooks", "saekit-test-org/no-such-model"],
        ("saekit-test-org/no-such-model", "HF_HUB_OFFLINE=0", "model=/path/to/hf_dir"),
        env={"HF_HUB_OFFLINE": "1"},
    ),
    Case(
        "hooks: bare unknown name",
        ["hooks", "gpt2-nonexistent"],
        ("'gpt2-nonexistent'", "org/name"),
    ),
    # ---- SAE checkpoints (item 4): validated before anything SAE-sized is allocated
    Case(
        "eval: truncated sae.safetensors",
        ["eval", "{run}"],
        ("sae.safetensors", "truncated", "re-save"),
        setup=truncate(f"{FINAL}/sae.safetensors", 3000),
    ),
    Case(
        "eval: sae.safetensors is garbage",
        ["eval", "{run}"],
        ("sae.safetensors", "corrupt"),
        setup=write(f"{FINAL}/sae.safetensors", b"\x89PNG\r\n" + bytes(range(256)) * 8),
    ),
    Case(
        "eval: cfg.json is binary",
        ["eval", "{run}"],
        ("cfg.json", "not valid JSON"),
        setup=write(f"{FINAL}/cfg.json", b"\xff\xfe\x00binary"),
    ),
    Case(
        "eval: cfg.json is a list",
        ["eval", "{run}"],
        ("cfg.json", "not an object"),
        setup=write(f"{FINAL}/cfg.json", "[1, 2]"),
    ),
    Case(
        "eval: cfg.json d_in is a string",
        ["eval", "{run}"],
        ("cfg.json", "d_in", "positive integer", "re-save"),
        setup=edit_cfg(FINAL, d_in="64"),
    ),
    Case(
        "eval: cfg.json d_in is a bool",
        ["eval", "{run}"],
        ("cfg.json", "d_in", "positive integer"),
        setup=edit_cfg(FINAL, d_in=True),
    ),
    Case(
        "eval: cfg.json act_scale NaN",
        ["eval", "{run}"],
        ("cfg.json", "act_scale", "finite number > 0"),
        setup=edit_cfg(FINAL, act_scale=math.nan),
    ),
    Case(
        "eval: cfg.json act_scale negative",
        ["eval", "{run}"],
        ("act_scale", "finite number > 0"),
        setup=edit_cfg(FINAL, act_scale=-2.0),
    ),
    Case(
        "eval: cfg.json k of the wrong type",
        ["eval", "{run}"],
        ("cfg.json", "invalid SAE config", "sae.params.k", "re-save"),
        setup=edit_cfg(FINAL, sae__params__k="four"),
    ),
    Case(
        "eval: cfg.json memory bomb (d_sae=3M)",
        ["eval", "{run}"],
        ("sae.safetensors", "W_enc", "d_sae=3000000", "do not belong together"),
        setup=edit_cfg(FINAL, d_sae=3_000_000, sae__d_sae=3_000_000),
    ),
    Case(
        "eval: cfg.json d_sae disagrees with its sae section",
        ["eval", "{run}"],
        ("cfg.json", "d_sae=64", "sae section gives d_sae=96"),
        setup=edit_cfg(FINAL, sae__d_sae=96),
    ),
    Case(
        "eval: weights of another width",
        ["eval", "{run}"],
        ("sae.safetensors", "shape", "do not belong"),
        setup=edit_weights(FINAL, other_width),
    ),
    Case(
        "eval: integer weights",
        ["eval", "{run}"],
        ("sae.safetensors", "W_enc", "dtype I32"),
        setup=edit_weights(FINAL, int_encoder),
    ),
    Case(
        "eval: NaN in the decoder",
        ["eval", "{run}"],
        ("sae.safetensors", "W_dec", "NaN/inf", "earlier checkpoint"),
        setup=edit_weights(FINAL, nan_decoder),
    ),
    Case(
        "eval: cfg.json from a newer saekit",
        ["eval", "{run}"],
        ("cfg.json", "format_version", "upgrade saekit"),
        setup=edit_cfg(FINAL, format_version=99),
    ),
    Case(
        "index: truncated final/ weights",
        ["index", "{run}"],
        ("sae.safetensors", "truncated"),
        setup=truncate(f"{FINAL}/sae.safetensors", 100),
    ),
    Case(
        "index: cfg.json with wrong hookpoint type",
        ["index", "{run}"],
        ("cfg.json", "hookpoint", "a string"),
        setup=edit_cfg(FINAL, hookpoint=["blocks.1.hook_resid_post"]),
    ),
    Case(
        "eval: newest checkpoint of an unfinished run is corrupt",
        ["eval", "{ckpt_run}"],
        ("ckpt_run/checkpoints/step_", "sae.safetensors", "truncated"),
        setup=lambda s: truncate(str(_newest_sae(s) / "sae.safetensors"), 500)(s),
    ),
]


def _newest_sae(sandbox: Path) -> Path:
    steps = sorted((sandbox / "ckpt_run" / "checkpoints").glob("step_*"))
    return (steps[-1] / "sae").relative_to(sandbox)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case, sandbox, caplog, monkeypatch):
    run_case(case, sandbox, caplog, monkeypatch)


# ---------------------------------------------------------------------------------------- memory


@pytest.fixture
def no_large_allocation(monkeypatch):
    """Fail the test if anything allocates a tensor of more than 4M elements (16 MiB in fp32)."""
    limit = 4 * 2**20

    def guard(factory):
        def guarded(*size, **kwargs):
            dims = size[0] if len(size) == 1 and isinstance(size[0], tuple | list | torch.Size) else size
            if dims and all(isinstance(d, int) for d in dims) and math.prod(dims) > limit:
                raise AssertionError(f"allocated a tensor of shape {tuple(dims)} before validation")
            return factory(*size, **kwargs)

        return guarded

    for name in ("empty", "zeros", "ones", "randn", "rand"):
        monkeypatch.setattr(torch, name, guard(getattr(torch, name)))


def test_memory_bomb_is_answered_without_a_large_allocation(sandbox, no_large_allocation):
    """cfg.json claims 30M latents (15 GiB of fp32 weights): refused from the header, nothing allocated."""
    edit_cfg(FINAL, d_sae=30_000_000, sae__d_sae=30_000_000)(sandbox)
    with pytest.raises(RunDirError, match=r"sae\.safetensors: W_enc has shape \(64, 64\) but cfg\.json"):
        load_sae(sandbox / FINAL)
    edit_cfg(FINAL, d_sae=64, sae__d_sae=64)(sandbox)
    assert load_sae(sandbox / FINAL).d_sae == 64  # the guard lets a real load through


def test_an_sae_larger_than_available_memory_is_refused_before_it_is_built(sandbox, monkeypatch):
    monkeypatch.setattr(checks, "available_memory_bytes", lambda: 20_000)
    monkeypatch.setattr(Sae, "__init__", lambda *a, **k: pytest.fail("the SAE was built"))
    with pytest.raises(RunDirError) as info:
        load_sae(sandbox / FINAL)
    message = str(info.value)
    need = checks.parameter_bytes(checks.read_cfg_json(sandbox / FINAL / "cfg.json"), False) * 1.5
    assert f"{need / 2**10:.1f} KiB" in message and "19.5 KiB" in message
    assert str(sandbox / FINAL / "sae.safetensors") in message and "d_sae=64" in message


def test_available_memory_falls_back_when_meminfo_is_missing(monkeypatch, tmp_path):
    real = checks.available_memory_bytes()
    assert real is None or real > 0
    monkeypatch.setattr(checks, "MEMINFO", tmp_path / "no-meminfo")
    fallback = checks.available_memory_bytes()
    assert fallback is None or fallback > 0


# ---------------------------------------------------------------------------------------- bf16


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16_gemm", lambda device: False)
    monkeypatch.setattr(precision, "_WARNED", set())


def test_bench_bf16_without_native_bf16_warns_once_and_reports_fp32(cpu_without_bf16, caplog, capsys):
    from saekit.cli import main

    args = ["bench", "bf16=true", "d_in=32", "d_sae=256,512", "k=4", "batch=32", "reps=1", "threads=1"]
    with caplog.at_level(logging.WARNING, logger="saekit"):
        code = main([*args, "memory=false", "dense=false"])
    assert code == 0
    out = capsys.readouterr().out
    assert "encoder GEMM ran in: fp32" in out and "not native" in out and "4.6x slower" in out
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "encoder_bf16" in w]) == 1, warnings  # two widths, one warning
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
