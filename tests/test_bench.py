"""`saekit bench` on tiny shapes: one row per configuration with finite ratios, memory from subprocesses."""

import re

import pytest
import torch

from saekit.bench import run_bench
from saekit.bench.memory import expected_budget_bytes, measure_here
from saekit.bench.step import StepBenchConfig
from saekit.config import BenchConfig, load_config
from saekit.errors import ConfigError
from saekit.sae.encode_path import cpu_capability


def bench(args: list[str]) -> str:
    """`saekit bench ARGS` as the CLI runs it: key=value overrides through the stage-config loader."""
    return run_bench(load_config(BenchConfig, None, args))


def test_bench_prints_one_row_per_config_and_the_memory_growth(monkeypatch):
    monkeypatch.delenv("SAEKIT_ENCODE_PATH", raising=False)  # conftest pins dense; this shows the auto rule
    args = ["d_sae=1024,2048", "k=4", "batch=32", "d_in=64", "reps=1", "threads=1"]
    text = bench([*args, "dense=false"])  # the dense reference's subprocesses would double the time
    header = text.splitlines()[0]
    assert f"capability={cpu_capability()}" in header  # e.g. AVX2, AVX512, AVX512+AMX_BF16
    assert "auxk@0.5" in text.splitlines()[1] and "batchtopk" in text.splitlines()[1]
    rows = [line for line in text.splitlines() if re.match(r"\s+\d+\s+\d+\s+\d+ \|", line)]
    assert [int(r.split()[0]) for r in rows] == [1024, 2048]
    for row in rows:
        timing, memory = row.split("|")[1:3]
        gemm_ms, step, auxk, auxk_half, batchtopk, dense, dense_over_saekit, step_over_warm = timing.split()
        assert all(float(v) > 0 for v in (gemm_ms, step, auxk, auxk_half, batchtopk, step_over_warm))
        assert dense == dense_over_saekit == "-"
        peaks = [float(v) for v in re.findall(r"[\d.]+", memory)]
        assert len(peaks) == 3 and all(v > 0 for v in peaks)  # saekit / +auxk (budget)
    # tiny problems take the dense encoder path without measuring; the line says so per shape
    assert re.search(r"d_sae=1024 k=4: encoder path: dense \(small problem", text)
    dense_run = bench([*args, "d_sae=1024", "memory=false"])  # later keys win: one width, timing only
    (row,) = [line for line in dense_run.splitlines() if re.match(r"\s+1024\s+4\s+32 \|", line)]
    assert all(float(v) > 0 for v in row.split("|")[1].split())  # dense ratio and dense/saekit present
    assert re.search(r"memory k=4: d_sae 1024→2048: saekit peak \+\d+ MiB vs budget \+\d+ MiB", text)


def test_forced_fused_path_is_reported_and_budgets_one_tile(monkeypatch):
    from saekit.sae import encode_path

    monkeypatch.setattr(encode_path, "TILING", encode_path.Tiling(rows=16, latents=256))
    args = ["d_sae=1024", "k=4", "batch=32", "d_in=64", "reps=1", "threads=1", "dense=false", "memory=false"]
    try:
        text = bench([*args, "encode_path=fused", "dead=0.25", "others=mutual_choice"])
    finally:
        encode_path.set_encode_path(None)
    assert "d_sae=1024 k=4: encoder path: fused (SAEKIT_ENCODE_PATH=fused)" in text
    assert "auxk@0.25" in text and "mutual_choice" in text
    cfg = StepBenchConfig(d_in=64, d_sae=1024, k=4, batch=32)
    weights = (2 * 64 * 1024 + 1024 + 64) * 4
    assert expected_budget_bytes(cfg, fused=True) == 4 * weights + 16 * 256 * 4 + 32 * 64 * 4


def test_device_bench_without_cuda_fails_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: `make gpu-check` runs the device bench there")
    with pytest.raises(ConfigError, match="no CUDA device") as err:
        bench(["device=cuda"])
    assert "\n" not in str(err.value)


def test_collection_rows_compare_collect_with_the_bare_forward(monkeypatch, tmp_path):
    from saekit.bench import collection

    monkeypatch.setattr(collection, "MODEL", "tiny")
    monkeypatch.setattr(collection, "HOOK", "blocks.1.hook_resid_post")
    monkeypatch.setattr(collection, "CONTEXT", 16)
    monkeypatch.setattr(collection, "BATCHES", 2)
    tps = collection.time_collection(reps=1)
    assert set(tps) == {"bare", "collect", "bare_grads", "collect_grads", "full_forward"}
    assert all(v > 0 for v in tps.values())


def test_bench_rejects_unknown_options_with_the_valid_keys():
    with pytest.raises(ConfigError, match="d_sae"):
        bench(["dsae=4"])


def test_memory_measurement_reports_the_budget_of_weights_adam_and_one_preactivation():
    cfg = StepBenchConfig(d_in=16, d_sae=64, k=4, batch=8)
    row = measure_here("saekit", cfg, steps=1)
    weights = (2 * 16 * 64 + 64 + 16) * 4
    assert row["budget_mib"] * 2**20 == pytest.approx(4 * weights + 8 * 64 * 4 + 8 * 16 * 4)
    assert row["peak_mib"] >= 0
