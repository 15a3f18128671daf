"""`saekit bench` on tiny shapes: one row per configuration with finite ratios, memory from subprocesses."""

import re

import pytest

from saekit.bench import run_bench
from saekit.bench.memory import measure_here
from saekit.bench.step import StepBenchConfig
from saekit.config import BenchConfig, load_config
from saekit.errors import ConfigError


def bench(args: list[str]) -> str:
    """`saekit bench ARGS` as the CLI runs it: key=value overrides through the stage-config loader."""
    return run_bench(load_config(BenchConfig, None, args))


def test_bench_prints_one_row_per_config_and_the_memory_growth():
    args = ["d_sae=1024,2048", "k=4", "batch=32", "d_in=64", "reps=1", "threads=1"]
    text = bench([*args, "dense=false"])  # the dense reference's subprocesses would double the time
    rows = [line for line in text.splitlines() if re.match(r"\s+\d+\s+\d+\s+\d+ \|", line)]
    assert [int(r.split()[0]) for r in rows] == [1024, 2048]
    for row in rows:
        timing, memory = row.split("|")[1:3]
        gemm_ms, step, auxk, dense, dense_over_saekit, step_over_warm = timing.split()
        assert all(float(v) > 0 for v in (gemm_ms, step, auxk, step_over_warm))
        assert dense == dense_over_saekit == "-"
        peaks = [float(v) for v in re.findall(r"[\d.]+", memory)]
        assert len(peaks) == 3 and all(v > 0 for v in peaks)  # saekit / +auxk (budget)
    dense_run = bench([*args, "d_sae=1024", "memory=false"])  # later keys win: one width, timing only
    (row,) = [line for line in dense_run.splitlines() if re.match(r"\s+1024\s+4\s+32 \|", line)]
    assert all(float(v) > 0 for v in row.split("|")[1].split())  # dense ratio and dense/saekit present
    assert re.search(r"memory k=4: d_sae 1024→2048: saekit peak \+\d+ MiB vs budget \+\d+ MiB", text)


def test_bench_rejects_unknown_options_with_the_valid_keys():
    with pytest.raises(ConfigError, match="d_sae"):
        bench(["dsae=4"])


def test_memory_measurement_reports_the_budget_of_weights_adam_and_one_preactivation():
    cfg = StepBenchConfig(d_in=16, d_sae=64, k=4, batch=8)
    row = measure_here("saekit", cfg, steps=1)
    weights = (2 * 16 * 64 + 64 + 16) * 4
    assert row["budget_mib"] * 2**20 == pytest.approx(4 * weights + 8 * 64 * 4 + 8 * 16 * 4)
    assert row["peak_mib"] >= 0
