"""The shipped training configs are runnable as written: each loads, and its dead-latent window fits its
token budget (a window longer than the run means AuxK and the dead tracker never act)."""

from pathlib import Path

import pytest

from saekit.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
TRAIN_CONFIGS = sorted(
    p
    for p in (ROOT / "configs").glob("*.yaml")
    if "sae:" in p.read_text() and "total_tokens" in p.read_text()
)


def test_train_configs_found():
    assert {"topk.yaml", "batchtopk.yaml", "tiny_topk.yaml"} <= {p.name for p in TRAIN_CONFIGS}


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_dead_window_fits_the_token_budget(path):
    cfg = load_config(TrainConfig, path, [])
    # at least two windows per run, so a latent can be declared dead and then revived within it
    assert cfg.sae.dead_tokens * 2 <= cfg.total_tokens, (cfg.sae.dead_tokens, cfg.total_tokens)
